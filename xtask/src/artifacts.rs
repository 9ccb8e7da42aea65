//! What cargo built, as cargo reports it: every task that needs the path of a program cargo
//! built asks here instead of assembling one under `target/` (the target directory, the
//! profile directory and a test binary's hash are cargo's to choose).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::run;

/// One `compiler-artifact` message: a target cargo compiled (or found fresh).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// The target's name as Cargo.toml spells it (`migr-agent`, `verifier`, `foundation`).
    pub name: String,
    /// `bin`, `test`, `example`, `lib`, `custom-build`, ...
    pub kinds: Vec<String>,
    pub package_id: String,
    /// The Cargo.toml of the target's package.
    pub manifest_path: PathBuf,
    /// None for targets that are not programs (libraries, build scripts' outputs).
    pub executable: Option<PathBuf>,
    pub filenames: Vec<PathBuf>,
}

/// One `build-script-executed` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildScriptRun {
    pub package_id: String,
    pub out_dir: PathBuf,
}

/// What one cargo invocation reported.
#[derive(Debug, Default)]
pub struct Build {
    pub artifacts: Vec<Artifact>,
    pub build_scripts: Vec<BuildScriptRun>,
}

/// Runs `cargo <args>` (a build: `build`, `test --no-run`, ...) and returns what it built.
/// Diagnostics go to the terminal as usual; only the JSON on stdout is read.
pub fn build(args: &[&str]) -> Result<Build> {
    let mut cmd = run::cargo();
    cmd.args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let line = run::render(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    let stdout = String::from_utf8(out.stdout)
        .with_context(|| format!("`{line}` wrote output that is not UTF-8"))?;
    parse(&stdout).with_context(|| format!("reading the messages of `{line}`"))
}

/// Parses cargo's JSON messages, one object a line; other kinds of message are skipped.
pub fn parse(messages: &str) -> Result<Build> {
    let mut build = Build::default();
    for (i, line) in messages.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = serde_json::from_str(line)
            .with_context(|| format!("line {}: not a JSON message: {line}", i + 1))?;
        let read = match msg.get("reason").and_then(Value::as_str) {
            Some("compiler-artifact") => artifact(&msg).map(|a| build.artifacts.push(a)),
            Some("build-script-executed") => {
                build_script_run(&msg).map(|b| build.build_scripts.push(b))
            }
            _ => Ok(()),
        };
        read.with_context(|| format!("line {}", i + 1))?;
    }
    Ok(build)
}

impl Build {
    /// (target name, executable) of every program of this kind, in cargo's order.
    pub fn executables(&self, kind: &str) -> Vec<(String, PathBuf)> {
        self.artifacts
            .iter()
            .filter(|a| a.kinds.iter().any(|k| k == kind))
            .filter_map(|a| Some((a.name.clone(), a.executable.clone()?)))
            .collect()
    }

    /// The executable of the `kind` target `name`; an error when cargo reported none.
    pub fn executable(&self, kind: &str, name: &str) -> Result<PathBuf> {
        self.executables(kind)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, path)| path)
            .with_context(|| format!("cargo reported no executable for the {kind} `{name}`"))
    }

    /// OUT_DIR of the build script of the package whose Cargo.toml is `manifest`.
    pub fn out_dir(&self, manifest: &Path) -> Result<&Path> {
        let package = self
            .artifacts
            .iter()
            .find(|a| a.manifest_path == manifest)
            .with_context(|| format!("cargo reported nothing built from {}", manifest.display()))?;
        self.build_scripts
            .iter()
            .find(|b| b.package_id == package.package_id)
            .map(|b| b.out_dir.as_path())
            .with_context(|| {
                format!(
                    "cargo reported no build script run for {}",
                    manifest.display()
                )
            })
    }
}

fn artifact(msg: &Value) -> Result<Artifact> {
    let target = msg.get("target").context("no `target`")?;
    let executable = match msg.get("executable") {
        None | Some(Value::Null) => None,
        Some(v) => Some(PathBuf::from(
            v.as_str().context("`executable` is not a string")?,
        )),
    };
    Ok(Artifact {
        name: string(target, "name")?.to_string(),
        kinds: strings(target, "kind")?,
        package_id: string(msg, "package_id")?.to_string(),
        manifest_path: string(msg, "manifest_path")?.into(),
        executable,
        filenames: strings(msg, "filenames")?
            .into_iter()
            .map(PathBuf::from)
            .collect(),
    })
}

fn build_script_run(msg: &Value) -> Result<BuildScriptRun> {
    Ok(BuildScriptRun {
        package_id: string(msg, "package_id")?.to_string(),
        out_dir: string(msg, "out_dir")?.into(),
    })
}

fn string<'a>(obj: &'a Value, key: &str) -> Result<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("`{key}` is missing or not a string"))
}

fn strings(obj: &Value, key: &str) -> Result<Vec<String>> {
    let items = obj
        .get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("`{key}` is missing or not an array"))?;
    items
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .with_context(|| format!("`{key}` holds something other than strings"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages as cargo writes them, shortened: most fields this module ignores are left out.
    const MESSAGES: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/migr-user#0.1.0","manifest_path":"/w/migr-user/Cargo.toml","target":{"kind":["custom-build"],"crate_types":["bin"],"name":"build-script-build","src_path":"/w/migr-user/build.rs"},"filenames":["/w/target/debug/build/migr-user-1/build-script-build"],"executable":null,"fresh":true}
{"reason":"build-script-executed","package_id":"path+file:///w/migr-user#0.1.0","linked_libs":[],"linked_paths":[],"cfgs":[],"env":[],"out_dir":"/w/target/debug/build/migr-user-2/out"}
{"reason":"compiler-artifact","package_id":"path+file:///w/migr-user#0.1.0","manifest_path":"/w/migr-user/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"migr_user","src_path":"/w/migr-user/src/lib.rs"},"filenames":["/w/target/debug/libmigr_user.rlib"],"executable":null,"fresh":true}
{"reason":"compiler-artifact","package_id":"path+file:///w/migr-user#0.1.0","manifest_path":"/w/migr-user/Cargo.toml","target":{"kind":["bin"],"crate_types":["bin"],"name":"migr-agent","src_path":"/w/migr-user/src/bin/migr-agent.rs"},"filenames":["/w/target/debug/migr-agent"],"executable":"/w/target/debug/migr-agent","fresh":false}
{"reason":"compiler-artifact","package_id":"path+file:///w/tests#migr-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"foundation","src_path":"/w/tests/tests/foundation.rs"},"filenames":["/w/target/debug/deps/foundation-3f2a"],"executable":"/w/target/debug/deps/foundation-3f2a","fresh":true}
{"reason":"compiler-artifact","package_id":"path+file:///w/tests#migr-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"a \"quoted\" name","src_path":"/w/tests/tests/q.rs"},"filenames":["/w/target/debug/deps/q-1"],"executable":"/w/target/debug/deps/q-1","fresh":true}
{"reason":"build-finished","success":true}
"#;

    #[test]
    fn reads_executables_by_kind_and_name() {
        let build = parse(MESSAGES).unwrap();
        assert_eq!(build.artifacts.len(), 5);
        assert_eq!(
            build.executables("test"),
            [
                (
                    "foundation".into(),
                    "/w/target/debug/deps/foundation-3f2a".into()
                ),
                (
                    "a \"quoted\" name".into(),
                    "/w/target/debug/deps/q-1".into()
                ),
            ]
        );
        assert_eq!(
            build.executable("bin", "migr-agent").unwrap(),
            Path::new("/w/target/debug/migr-agent")
        );
        let err = build.executable("bin", "migrctl").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cargo reported no executable for the bin `migrctl`"
        );
        // A library is an artifact but no program.
        assert!(build.executables("lib").is_empty());
        assert_eq!(
            build.artifacts[1].filenames,
            [PathBuf::from("/w/target/debug/libmigr_user.rlib")]
        );
    }

    #[test]
    fn finds_a_packages_out_dir() {
        let build = parse(MESSAGES).unwrap();
        assert_eq!(
            build.out_dir(Path::new("/w/migr-user/Cargo.toml")).unwrap(),
            Path::new("/w/target/debug/build/migr-user-2/out")
        );
        let err = build.out_dir(Path::new("/w/tests/Cargo.toml")).unwrap_err();
        assert!(err.to_string().contains("no build script run"), "{err}");
        let err = build.out_dir(Path::new("/w/other/Cargo.toml")).unwrap_err();
        assert!(err.to_string().contains("nothing built from"), "{err}");
    }

    #[test]
    fn bad_messages_are_errors_that_name_the_line() {
        for (text, says) in [
            (
                "{\"reason\":\"build-finished\"}\nnot json\n",
                "line 2: not a JSON message",
            ),
            (
                r#"{"reason":"compiler-artifact","target":{"name":"x","kind":["bin"]}}"#,
                "`package_id` is missing",
            ),
            (
                r#"{"reason":"compiler-artifact","package_id":"p","manifest_path":"/m","target":{"name":"x","kind":"bin"},"filenames":[],"executable":null}"#,
                "`kind` is missing or not an array",
            ),
            (
                r#"{"reason":"compiler-artifact","package_id":"p","manifest_path":"/m","target":{"name":"x","kind":["bin"]},"filenames":[],"executable":7}"#,
                "`executable` is not a string",
            ),
            (
                r#"{"reason":"build-script-executed","package_id":"p"}"#,
                "`out_dir` is missing",
            ),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(says), "{err}");
        }
        // Messages of other kinds, and blank lines, are not artifacts.
        let build = parse("\n{\"reason\":\"compiler-message\"}\n[1]\n").unwrap();
        assert!(build.artifacts.is_empty() && build.build_scripts.is_empty());
    }
}
