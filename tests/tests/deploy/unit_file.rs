//! A systemd unit file read as systemd reads one, as far as the test needs:
//! `[Section]` headers, `Key=Value` lines, `#`/`;` comments, lines joined
//! by a trailing backslash, and a key that may repeat.

use std::collections::BTreeMap;

pub struct UnitFile {
    /// (section, key) -> every value, in order.
    entries: BTreeMap<(String, String), Vec<String>>,
}

impl UnitFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut section: Option<String> = None;
        let mut pending = String::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if pending.is_empty()
                && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
            {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.to_string());
                continue;
            }
            let section = section
                .clone()
                .ok_or(format!("line {}: a key before any section", i + 1))?;
            let (key, value) = line
                .split_once('=')
                .ok_or(format!("line {}: not `Key=Value`: {line:?}", i + 1))?;
            entries
                .entry((section, key.trim().to_string()))
                .or_default()
                .push(value.trim().to_string());
        }
        if !pending.is_empty() {
            return Err("the file ends in a continued line".into());
        }
        Ok(Self { entries })
    }

    /// The last value of a key (a later one overrides an earlier one).
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.entries
            .get(&(section.to_string(), key.to_string()))
            .and_then(|v| v.last())
            .map(String::as_str)
    }
}

#[test]
fn unit_files_parse_as_systemd_reads_them() {
    let unit =
        UnitFile::parse("# c\n[Unit]\nA=1\n; c\n[Service]\nExecStart=/bin/x \\\n  --y\nA=2\nA=3\n")
            .unwrap();
    assert_eq!(unit.get("Unit", "A"), Some("1"));
    assert_eq!(unit.get("Service", "A"), Some("3"));
    assert_eq!(unit.get("Service", "ExecStart"), Some("/bin/x  --y"));
    assert!(UnitFile::parse("A=1\n").is_err());
    assert!(UnitFile::parse("[S]\nnonsense\n").is_err());
}
