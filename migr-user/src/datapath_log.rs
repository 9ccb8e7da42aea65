//! The datapath's opt-in debug logs (`migr-agent run --datapath-log LEVEL`):
//! the level the XDP program is loaded with (aya-log's `AYA_LOG_LEVEL`, a
//! read-only global: with logs off the verifier drops every log call, see
//! `migr-ebpf/src/log.rs`), and the reader that hands the program's records
//! to the agent's own log, target `datapath`: warnings as warnings, the rest
//! at info, so that the agent's default filter (info) shows what the
//! operator asked for with `--datapath-log debug`.

use std::{
    fmt,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::{Result, bail};
use aya::Ebpf;
use aya_log::EbpfLogger;

/// The most detailed datapath log records kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DatapathLog {
    /// None: the program is verified without its log calls.
    #[default]
    Off,
    /// Frames that failed to park or forward, and failed replay runs.
    Warn,
    /// Also every verdict on a frame of a service.
    Debug,
}

impl DatapathLog {
    /// The value of `AYA_LOG_LEVEL`: aya-log's `Level`, 0 for none.
    pub const fn aya_level(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Warn => aya_log::Level::Warn as u8,
            Self::Debug => aya_log::Level::Debug as u8,
        }
    }
}

impl std::str::FromStr for DatapathLog {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Self::Off),
            "warn" => Ok(Self::Warn),
            "debug" => Ok(Self::Debug),
            other => bail!("unknown datapath log level {other:?}: expected off, warn or debug"),
        }
    }
}

impl fmt::Display for DatapathLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Warn => "warn",
            Self::Debug => "debug",
        })
    }
}

/// One record of the program's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: log::Level,
    pub text: String,
}

impl LogLine {
    /// Writes the record into the agent's log, target `datapath`:
    /// warnings as warnings, the rest at info (see the module).
    pub fn emit(&self) {
        let text = &self.text;
        match self.level {
            log::Level::Error | log::Level::Warn => tracing::warn!(target: "datapath", "{text}"),
            _ => tracing::info!(target: "datapath", "{text}"),
        }
    }
}

/// Reads the program's log records (a ring buffer).
pub struct LogReader {
    logger: EbpfLogger<Collect>,
    lines: Arc<Mutex<Vec<LogLine>>>,
}

/// What aya-log's reader formats, kept for [`LogReader::drain`].
struct Collect(Arc<Mutex<Vec<LogLine>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = LogLine {
            level: record.level(),
            text: record.args().to_string(),
        };
        // Nothing panics holding the lock; a poisoned one is still sound.
        let mut lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        lines.push(line);
    }

    fn flush(&self) {}
}

impl LogReader {
    /// Takes the object's log ring; None when logs are off.
    pub fn start(ebpf: &mut Ebpf, level: DatapathLog) -> Result<Option<Self>> {
        if level == DatapathLog::Off {
            return Ok(None);
        }
        let lines = Arc::new(Mutex::new(Vec::new()));
        let logger = EbpfLogger::init_with_logger(ebpf, Collect(lines.clone()))
            .map_err(|e| anyhow::anyhow!("reading the datapath's log ring: {e}"))?;
        Ok(Some(Self { logger, lines }))
    }

    /// The ring's descriptor, readable when records wait.
    pub fn fd(&self) -> i32 {
        self.logger.as_raw_fd()
    }

    /// The records that waited, oldest first.
    pub fn drain(&mut self) -> Vec<LogLine> {
        self.logger.flush();
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_read_back_as_written_and_map_to_aya_log() {
        for level in [DatapathLog::Off, DatapathLog::Warn, DatapathLog::Debug] {
            assert_eq!(level.to_string().parse::<DatapathLog>().unwrap(), level);
        }
        assert_eq!(DatapathLog::Off.aya_level(), 0);
        assert_eq!(
            DatapathLog::Warn.aya_level(),
            aya_log::Level::Warn as u8,
            "aya-log's numbering"
        );
        assert_eq!(DatapathLog::Debug.aya_level(), aya_log::Level::Debug as u8);
        let err = "trace".parse::<DatapathLog>().unwrap_err().to_string();
        assert!(err.contains("off, warn or debug"), "{err}");
    }
}
