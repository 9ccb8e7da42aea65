//! The schema of a scenario's results file, `results/NAME.json`
//! (`migr-testbed/1`, docs/testbed.md): written by the runner
//! ([`crate::scenarios`]) and read by `cargo xtask report`, both through these
//! types. Only serde here, so xtask takes it without the testbed.
//!
//! Files written before a field existed lack it: such fields have
//! `#[serde(default)]`. The fields the report cannot do without (the
//! scenario's name, protocol, steering and mode, the summary and the runs)
//! are required, so a file without them fails naming the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `schema` string of a scenario's file.
pub const SCHEMA: &str = "migr-testbed/1";

/// One scenario's file: its configuration, a summary over the runs, each
/// run's record and the runs that failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioFile {
    pub schema: String,
    pub scenario: String,
    #[serde(default)]
    pub description: String,
    pub config: Config,
    #[serde(default)]
    pub machine: Machine,
    /// Wall-clock seconds since the epoch when the first run started.
    #[serde(default)]
    pub started_at: f64,
    /// How long the runs took so far.
    #[serde(default)]
    pub seconds: f64,
    /// Metric name to its statistics over the runs (`None`: no run measured it).
    pub summary: Summary,
    /// Each successful run's full record, as the runner's `Run::to_json`
    /// writes it (docs/testbed.md lists the fields). The report only counts
    /// them; its per-request data is in `NAME/run-K.csv`.
    pub runs: Vec<serde_json::Value>,
    /// Files written before failed runs were kept have none.
    #[serde(default)]
    pub failed_runs: Vec<FailedRun>,
}

/// What the scenario ran. Fields that only apply to some protocols are
/// `None` (JSON null) for the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub protocol: String,
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub client_probing: Option<String>,
    #[serde(default)]
    pub agent_xdp_mode: Option<String>,
    pub steering: bool,
    #[serde(default)]
    pub technique: String,
    #[serde(default)]
    pub preset: String,
    pub mode: String,
    #[serde(default)]
    pub period_ms: Option<u64>,
    #[serde(default)]
    pub ballast_mb: u64,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub migrate_after: u64,
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub dns_ttl_s: Option<u64>,
    #[serde(default)]
    pub udp_timeout_ms: Option<u64>,
    #[serde(default)]
    pub pool_size: Option<u64>,
}

/// The machine the runs ran on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: u64,
    /// The first line of `criu --version`.
    pub criu: String,
}

/// Metric name to its value over the runs; `None` (null) when no run
/// measured it.
pub type Summary = BTreeMap<String, Option<Metric>>;

/// One summary entry: statistics over the runs, or a flag (`client_ok`:
/// every run's client succeeded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Metric {
    Flag(bool),
    Stat(Stat),
}

/// A metric over `n` runs. The numbers are `None` where JSON has null
/// (serde_json writes a non-finite float as null).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub n: u64,
    pub mean: Option<f64>,
    /// Half-width of the 95% confidence interval of the mean.
    #[serde(default)]
    pub ci95: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// A run that failed, recorded instead of its record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailedRun {
    /// The run's number (1-based).
    pub run: u64,
    pub error: String,
}

impl ScenarioFile {
    /// The statistics of `metric` (`None`: absent, null, or a flag).
    pub fn stat(&self, metric: &str) -> Option<&Stat> {
        match self.summary.get(metric)? {
            Some(Metric::Stat(s)) => Some(s),
            _ => None,
        }
    }

    /// The file as the runner writes it: pretty JSON, keys sorted (through
    /// `serde_json::Value`, whose maps sort), as the files written before
    /// these types were, so that old and new files compare line by line.
    pub fn to_json_pretty(&self) -> serde_json::Result<String> {
        Ok(serde_json::to_string_pretty(&serde_json::to_value(self)?)? + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `written` has everything `old` has (it may add fields as null:
    /// an old file lacks the fields added since).
    fn keeps(written: &serde_json::Value, old: &serde_json::Value) -> bool {
        match (written, old) {
            (serde_json::Value::Object(w), serde_json::Value::Object(o)) => o
                .iter()
                .all(|(k, v)| w.get(k).is_some_and(|wv| keeps(wv, v))),
            (serde_json::Value::Array(w), serde_json::Value::Array(o)) => {
                w.len() == o.len() && w.iter().zip(o).all(|(w, o)| keeps(w, o))
            }
            _ => written == old,
        }
    }

    /// Every scenario file in the repository's results/ parses, and writing
    /// it back keeps all it had: the types describe what is there.
    #[test]
    fn the_results_in_the_repository_round_trip() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            if doc["schema"] != SCHEMA {
                continue;
            }
            let file: ScenarioFile = serde_json::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let written = serde_json::to_value(&file).unwrap();
            assert!(keeps(&written, &doc), "{}: {written}", path.display());
            checked += 1;
        }
        assert!(checked > 0, "no {SCHEMA} files in {}", dir.display());
    }

    #[test]
    fn null_and_flag_metrics() {
        let s: Summary = serde_json::from_str(
            r#"{"a": null, "ok": true, "d": {"n": 1, "mean": 2.0, "ci95": null}}"#,
        )
        .unwrap();
        assert_eq!(s["a"], None);
        assert_eq!(s["ok"], Some(Metric::Flag(true)));
        let Some(Metric::Stat(d)) = &s["d"] else {
            panic!("{s:?}")
        };
        assert_eq!((d.n, d.mean, d.ci95), (1, Some(2.0), None));
    }
}
