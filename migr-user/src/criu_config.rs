//! The action-script line that makes CRIU run `migrctl` as its hook when a
//! container runtime drives it over RPC (runc, podman): such runtimes pass no
//! `--action-script`, but CRIU reads one from its config file
//! (`/etc/criu/runc.conf` for runc and for podman on runc). `migrctl
//! criu-config install` appends two lines, a marker comment and the
//! `action-script` line; `remove` takes exactly those out again, so that an
//! operator's own file comes back byte for byte. [`install`] and [`remove`]
//! are pure (text in, text out); [`apply`] does the file I/O.

/// How the file looked before the lines were added, written into the marker
/// so that `remove` can restore it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Before {
    /// The file ended with a newline (or was empty): the lines were appended.
    Appended,
    /// The file's last line had no newline: one was added before the lines.
    NewlineAdded,
    /// There was no file: `install` created it.
    Created,
}

const MARK: &str = "# migr: CRIU runs migrctl as its action script";
const TAIL_APPENDED: &str = " (migrctl criu-config remove takes these two lines out)";
const TAIL_NEWLINE: &str =
    " (migrctl criu-config remove takes these two lines out, and the newline before them)";
const TAIL_CREATED: &str = " (migrctl criu-config remove deletes this file again)";

impl Before {
    fn marker(self) -> String {
        let tail = match self {
            Self::Appended => TAIL_APPENDED,
            Self::NewlineAdded => TAIL_NEWLINE,
            Self::Created => TAIL_CREATED,
        };
        format!("{MARK}{tail}")
    }

    fn from_marker(line: &str) -> Option<Self> {
        match line.strip_prefix(MARK)? {
            TAIL_APPENDED => Some(Self::Appended),
            TAIL_NEWLINE => Some(Self::NewlineAdded),
            TAIL_CREATED => Some(Self::Created),
            _ => None,
        }
    }
}

/// What `install` does to the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Install {
    /// Write this text.
    Write(String),
    /// The file already runs `script` as an action script: nothing to do.
    AlreadyThere,
}

/// What `remove` does to the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remove {
    Write(String),
    /// `install` created the file and nothing else was added since.
    Delete,
    /// No lines of migr's in it.
    NothingToRemove,
}

/// The script path must be one CRIU's config parser reads as one value.
pub fn check_script(script: &str) -> Result<(), String> {
    if !script.starts_with('/') {
        return Err(format!(
            "{script:?}: the action script must be an absolute path"
        ));
    }
    if script
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '#')
    {
        return Err(format!(
            "{script:?}: the action script's path must not hold spaces, quotes or #"
        ));
    }
    Ok(())
}

/// The file's new text with `script` as an action script. `text` is `None`
/// when the file does not exist. CRIU runs every `action-script` it is
/// given, so an operator's own script stays and runs too.
pub fn install(text: Option<&str>, script: &str) -> Result<Install, String> {
    check_script(script)?;
    let already = text.is_some_and(|t| {
        t.lines().any(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some("action-script") && words.next() == Some(script)
        })
    });
    if already {
        return Ok(Install::AlreadyThere);
    }
    let (mut out, before) = match text {
        None => (String::new(), Before::Created),
        Some(t) if t.is_empty() || t.ends_with('\n') => (t.to_string(), Before::Appended),
        Some(t) => (format!("{t}\n"), Before::NewlineAdded),
    };
    out.push_str(&before.marker());
    out.push('\n');
    out.push_str(&format!("action-script {script}\n"));
    Ok(Install::Write(out))
}

/// The file's text without migr's lines (the marker and the line after it).
pub fn remove(text: &str) -> Remove {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some((at, before)) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| Before::from_marker(l.trim_end_matches('\n')).map(|b| (i, b)))
    else {
        return Remove::NothingToRemove;
    };
    let ours = lines
        .get(at + 1)
        .is_some_and(|l| l.starts_with("action-script "));
    let end = if ours { at + 2 } else { at + 1 };
    let mut out: String = lines[..at].concat();
    out.push_str(&lines[end..].concat());
    match before {
        Before::Created if out.is_empty() => Remove::Delete,
        Before::NewlineAdded if end == lines.len() && out.ends_with('\n') => {
            out.pop();
            Remove::Write(out)
        }
        _ => Remove::Write(out),
    }
}

/// `install` or `remove` applied to `file`: written through a temporary
/// file and a rename, keeping the file's permissions. Returns what was done,
/// for the operator.
pub fn apply(file: &std::path::Path, script: Option<&str>) -> Result<String, String> {
    let shown = file.display();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {shown}: {e}")),
    };
    let new_text = match script {
        Some(script) => match install(text.as_deref(), script)? {
            Install::AlreadyThere => {
                return Ok(format!("{shown} already runs {script} as an action script"));
            }
            Install::Write(t) => t,
        },
        None => match remove(text.as_deref().unwrap_or("")) {
            Remove::NothingToRemove => return Ok(format!("{shown} has no lines of migr's")),
            Remove::Delete => {
                std::fs::remove_file(file).map_err(|e| format!("removing {shown}: {e}"))?;
                return Ok(format!("removed {shown} (migrctl had created it)"));
            }
            Remove::Write(t) => t,
        },
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let tmp = file.with_extension("migr-tmp");
    std::fs::write(&tmp, &new_text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(file) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, file).map_err(|e| format!("replacing {shown}: {e}"))?;
    Ok(match script {
        Some(script) => format!("{shown}: CRIU runs {script} as an action script"),
        None => format!("{shown}: migr's lines removed"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "/usr/local/bin/migrctl";

    fn round_trip(original: Option<&str>) {
        let Install::Write(installed) = install(original, SCRIPT).unwrap() else {
            panic!("nothing installed into {original:?}");
        };
        assert!(installed.contains("\naction-script /usr/local/bin/migrctl\n"));
        assert_eq!(
            install(Some(&installed), SCRIPT).unwrap(),
            Install::AlreadyThere,
            "a second install changes nothing"
        );
        match (remove(&installed), original) {
            (Remove::Delete, None) => {}
            (Remove::Write(back), Some(o)) => assert_eq!(back, o, "byte for byte"),
            (got, _) => panic!("{original:?}: {got:?}"),
        }
    }

    #[test]
    fn an_operators_file_comes_back_byte_for_byte() {
        round_trip(Some(""));
        round_trip(Some("tcp-established\n"));
        round_trip(Some("tcp-established\nlog-file /var/log/criu.log"));
        round_trip(Some("# mine\naction-script /opt/other.sh\n\n"));
        round_trip(Some("tcp-established\r\n"));
        round_trip(None);
    }

    #[test]
    fn lines_added_after_install_survive_remove() {
        let Install::Write(mut text) = install(Some("a\n"), SCRIPT).unwrap() else {
            panic!()
        };
        text.push_str("b\n");
        assert_eq!(remove(&text), Remove::Write("a\nb\n".into()));
        // A created file that got other lines is kept, without migr's.
        let Install::Write(mut created) = install(None, SCRIPT).unwrap() else {
            panic!()
        };
        created.push_str("tcp-established\n");
        assert_eq!(remove(&created), Remove::Write("tcp-established\n".into()));
    }

    #[test]
    fn an_operators_own_line_for_the_same_script_counts_as_installed() {
        assert_eq!(
            install(Some("action-script   /usr/local/bin/migrctl\n"), SCRIPT).unwrap(),
            Install::AlreadyThere
        );
        assert_eq!(
            remove("action-script /usr/local/bin/migrctl\n"),
            Remove::NothingToRemove,
            "remove touches only what install wrote"
        );
    }

    #[test]
    fn bad_script_paths_are_refused() {
        for bad in ["migrctl", "/usr/local/bin/migr ctl", "/a#b", "/a\"b"] {
            assert!(install(Some(""), bad).is_err(), "{bad:?}");
        }
    }
}
