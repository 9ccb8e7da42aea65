//! One kernel's result, read from the guest's console.

use std::time::{Duration, Instant};

use super::{PROGRAMS, kernel::Series};

#[derive(Default)]
pub(super) struct TestBinResult {
    pub(super) name: String,
    pub(super) rc: Option<i32>,
    pub(super) passed: u32,
    pub(super) failed: u32,
    pub(super) failures: Vec<String>,
}

#[derive(Default)]
pub(super) struct KernelResult {
    pub(super) series: Option<Series>,
    pub(super) kver: String,
    pub(super) version: String,
    /// Some(true) when every program loaded, Some(false) when not, None when never tried.
    pub(super) loaded: Option<bool>,
    /// Verified instructions per program (`verified_insns` of BPF_OBJ_GET_INFO_BY_FD).
    pub(super) insns: Vec<(String, String)>,
    /// The load check's outermost error ("migr needs Linux ≥ ..."), when loading failed.
    pub(super) verdict: Option<String>,
    /// Features the load check's probe found missing.
    pub(super) missing: Vec<String>,
    /// The load check's output, when loading failed: its causes and the verifier log's tail.
    pub(super) load_log: Vec<String>,
    pub(super) tests: Vec<TestBinResult>,
    pub(super) expected_tests: usize,
    /// QEMU start to the guest's "ready" (kernel boot, modules, 9p and the mounts).
    pub(super) boot: Option<Duration>,
    /// The load check alone.
    pub(super) load_time: Option<Duration>,
    /// The first test binary's start to the last one's end.
    pub(super) test_time: Option<Duration>,
    pub(super) rc: Option<i32>,
    pub(super) error: Option<String>,
    pub(super) btf: Option<bool>,
    pub(super) skipped: Option<String>,
}

impl KernelResult {
    /// Every program loaded and every test binary passed (for a kernel too old for the
    /// datapath: migr refused it, as it must). `passed` elsewhere counts tests.
    pub(super) fn succeeded(&self) -> bool {
        if self.series.is_some_and(Series::expects_refusal) {
            return self.refused_as_expected();
        }
        self.rc == Some(0)
            && self.error.is_none()
            && self.loaded == Some(true)
            && self.tests.len() == self.expected_tests
            && self
                .tests
                .iter()
                .all(|t| t.rc == Some(0) && t.failed == 0 && t.passed > 0)
    }

    /// A kernel that lacks features: the load check ran, was refused, and migr's message
    /// names the minimum kernel and the features this one lacks.
    fn refused_as_expected(&self) -> bool {
        self.error.is_none()
            && self.rc.is_some()
            && self.loaded == Some(false)
            && !self.missing.is_empty()
            && self
                .verdict
                .as_deref()
                .is_some_and(|v| v.starts_with("migr needs Linux ≥"))
    }

    pub(super) fn totals(&self) -> (u32, u32) {
        self.tests
            .iter()
            .fold((0, 0), |(p, f), t| (p + t.passed, f + t.failed))
    }

    pub(super) fn name(&self) -> &'static str {
        self.series.map_or("?", Series::name)
    }
}

#[derive(Default)]
pub(super) struct Clock {
    pub(super) started: Option<Instant>,
    pub(super) load_begin: Option<Instant>,
    pub(super) tests_begin: Option<Instant>,
}

/// Reads one console line into the result.
pub(super) fn parse_line(r: &mut KernelResult, text: &str, at: Instant, clock: &mut Clock) {
    if let Some(test) = r.tests.last_mut().filter(|t| t.rc.is_none()) {
        // libtest: "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = text.trim().strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(what)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            test.passed = count(" passed");
            test.failed = count(" failed");
        } else if let Some(name) = text
            .trim()
            .strip_prefix("test ")
            .and_then(|t| t.strip_suffix(" ... FAILED"))
        {
            test.failures.push(name.to_string());
        }
    }
    let Some(marker) = text.find("VMTEST-").map(|i| &text[i + 7..]) else {
        return;
    };
    let word = |key: &str| {
        marker
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    if marker.starts_with("READY") {
        r.boot = clock.started.map(|s| at - s);
    } else if let Some(v) = marker.strip_prefix("BTF ") {
        r.btf = Some(v.trim() == "yes");
    } else if marker.starts_with("LOAD-BEGIN") {
        clock.load_begin = Some(at);
    } else if let Some(rest) = marker.strip_prefix("LOAD| ") {
        parse_load_line(r, rest);
    } else if let Some(rest) = marker.strip_prefix("LOAD-RC=") {
        let rc: Option<i32> = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        r.loaded = Some(rc == Some(0) && r.insns.len() == PROGRAMS.len());
        r.load_time = clock.load_begin.map(|b| at - b);
    } else if let Some(why) = marker.strip_prefix("SKIP ") {
        r.skipped = Some(why.trim().to_string());
    } else if marker.starts_with("BEGIN ") {
        clock.tests_begin.get_or_insert(at);
        let name = marker.split_whitespace().nth(1).unwrap_or_default();
        r.tests.push(TestBinResult {
            name: name.to_string(),
            ..Default::default()
        });
    } else if marker.starts_with("END ") {
        if let Some(t) = r.tests.last_mut() {
            t.rc = word("rc=").and_then(|v| v.parse().ok());
        }
        r.test_time = clock.tests_begin.map(|b| at - b);
    } else if let Some(rc) = marker.strip_prefix("RC=") {
        r.rc = rc.trim().parse().ok();
    } else if let Some(what) = marker.strip_prefix("ERROR ") {
        r.error = Some(format!("in the guest: {what}"));
    }
}

/// One line of the load check (migr-user/examples/verifier.rs).
fn parse_load_line(r: &mut KernelResult, line: &str) {
    if let Some((program, info)) = line.split_once(": loaded; verified instructions ") {
        // "migr: loaded; verified instructions 26838, translated size 27872 bytes"
        let count = info.split(',').next().unwrap_or(info).trim();
        r.insns.push((program.to_string(), count.to_string()));
    } else if let Some(rest) = line.strip_prefix("feature | ") {
        // "feature | bpf_loop | 5.17 | MISSING"
        let parts: Vec<&str> = rest.split(" | ").collect();
        if let [name, since, state] = parts[..]
            && state != "yes"
        {
            r.missing.push(format!(
                "{name} (Linux ≥ {since}): {}",
                state.to_lowercase()
            ));
        }
    } else if let Some(verdict) = line.strip_prefix("load failed: ") {
        r.verdict = Some(verdict.to_string());
    } else if line.starts_with("cause: ") || line.starts_with("log | ") {
        r.load_log.push(line.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest's console as the init script and the load check print it.
    fn transcript(load: &str, datapath_result: &str) -> KernelResult {
        let console = format!(
            "VMTEST-INIT uptime=3.1 kernel=6.1.0-57-amd64\n\
             VMTEST-BTF yes\n\
             VMTEST-READY uptime=4.0\n\
             VMTEST-LOAD-BEGIN uptime=4.0\n\
             VMTEST-LOAD| kernel: 6.1.0-57-amd64\n\
             VMTEST-LOAD| feature | bpf_loop | 5.17 | yes\n\
             {load}\
             VMTEST-BEGIN foundation uptime=5\n\
             test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\
             VMTEST-END foundation rc=0 uptime=9\n\
             VMTEST-BEGIN datapath uptime=9\n\
             test park_copies_the_whole_frame_in_order ... FAILED\n\
             test result: {datapath_result}\n\
             VMTEST-END datapath rc=0 uptime=20\n\
             VMTEST-DONE uptime=20\n\
             VMTEST-RC=0\n"
        );
        let mut r = KernelResult {
            expected_tests: 2,
            ..Default::default()
        };
        let start = Instant::now();
        let mut clock = Clock {
            started: Some(start),
            ..Default::default()
        };
        for (i, line) in console.lines().enumerate() {
            let at = start + Duration::from_secs(i as u64);
            // Markers are found anywhere in a line (kernel messages may run into them).
            let line = if line.starts_with("VMTEST-") {
                format!("[   1.0] {line}")
            } else {
                line.to_string()
            };
            parse_line(&mut r, &line, at, &mut clock);
        }
        r
    }

    const LOADED: &str = "VMTEST-LOAD| migr: loaded; verified instructions 25418, translated size 1 bytes\n\
                          VMTEST-LOAD| migr_full: loaded; verified instructions 30001, translated size 2 bytes\n\
                          VMTEST-LOAD| migr_pass: loaded; verified instructions 2, translated size 16 bytes\n\
                          VMTEST-LOAD| migr_tc: loaded; verified instructions 554, translated size 900 bytes\n\
                          VMTEST-LOAD-RC=0 uptime=5\n";

    #[test]
    fn the_console_gives_counts_times_and_instruction_counts() {
        let r = transcript(LOADED, "ok. 13 passed; 0 failed; 0 ignored");
        assert_eq!(r.loaded, Some(true));
        assert_eq!(r.btf, Some(true));
        let insns: Vec<&str> = r.insns.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(insns, ["25418", "30001", "2", "554"]);
        assert_eq!(r.totals(), (16, 0));
        assert_eq!(r.boot, Some(Duration::from_secs(2)));
        assert_eq!(r.load_time, Some(Duration::from_secs(7)));
        assert_eq!(r.test_time, Some(Duration::from_secs(6)));
        assert!(r.succeeded());
    }

    #[test]
    fn a_failed_test_or_an_empty_binary_fails_the_kernel() {
        let r = transcript(LOADED, "FAILED. 12 passed; 1 failed; 0 ignored");
        assert_eq!(r.totals(), (15, 1));
        assert_eq!(
            r.tests[1].failures,
            ["park_copies_the_whole_frame_in_order"]
        );
        assert!(!r.succeeded());
        let r = transcript(LOADED, "ok. 0 passed; 0 failed; 0 ignored");
        assert!(!r.succeeded(), "a binary that ran no test must not pass");
    }

    #[test]
    fn a_refused_load_keeps_the_verdict_and_the_verifier_tail() {
        let load = "VMTEST-LOAD| feature | bpf_xdp_load_bytes | 5.18 | MISSING\n\
                    VMTEST-LOAD| load failed: migr needs Linux ≥ 5.18 for bpf_xdp_load_bytes\n\
                    VMTEST-LOAD| cause: the verifier refused program migr\n\
                    VMTEST-LOAD| log | processed 10 insns\n\
                    VMTEST-LOAD-RC=1 uptime=5\n";
        let r = transcript(load, "ok. 13 passed; 0 failed");
        assert_eq!(r.loaded, Some(false));
        assert_eq!(
            r.verdict.as_deref(),
            Some("migr needs Linux ≥ 5.18 for bpf_xdp_load_bytes")
        );
        assert_eq!(r.missing, ["bpf_xdp_load_bytes (Linux ≥ 5.18): missing"]);
        assert_eq!(r.load_log.len(), 2);
        assert!(!r.succeeded());
    }
}
