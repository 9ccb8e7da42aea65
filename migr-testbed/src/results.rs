//! The schema of the files the testbed writes (filled in next).
