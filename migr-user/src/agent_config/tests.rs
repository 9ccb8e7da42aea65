use clap::{CommandFactory as _, Parser};

use super::*;

/// The flags as `migr-agent run` parses them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    settings: Settings,
}

fn flags(args: &[&str]) -> Settings {
    Flags::try_parse_from(std::iter::once("migr-agent").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .settings
}

fn flag_error(args: &[&str]) -> String {
    match Flags::try_parse_from(std::iter::once("migr-agent").chain(args.iter().copied())) {
        Ok(_) => panic!("{args:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

fn file(text: &str) -> Settings {
    parse_file(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

const SHIPPED: &str = include_str!("../../package/agent.toml");

/// The shipped file with every commented key switched on.
fn shipped_uncommented() -> String {
    SHIPPED
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| is_key(k)) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_key(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '-')
}

#[test]
fn flags_alone_give_the_documented_defaults() {
    let cfg = flags(&["--iface", "eth0"])
        .over(Settings::default())
        .resolve()
        .unwrap();
    assert_eq!(cfg.ifaces, ["eth0"]);
    assert_eq!(cfg.mode, AttachMode::Auto);
    assert_eq!(cfg.socket, Path::new("/run/migr/agent.sock"));
    assert_eq!(cfg.pin_dir, Path::new("/sys/fs/bpf/migr"));
    assert_eq!(cfg.state_dir, Path::new("/run/migr"));
    assert_eq!(
        (cfg.park_limit_frames, cfg.park_limit_bytes),
        (65_536, 64 << 20)
    );
    assert_eq!(
        (cfg.ring_bytes, cfg.drain_ms, cfg.settle_ms, cfg.lease_ms),
        (16 << 20, 2_000, 250, 2_000)
    );
    assert_eq!((cfg.replay_rate, cfg.replay_burst), (10_000, 16));
    assert!(!cfg.keep_attached && !cfg.socket_group_read_only);
    assert_eq!(
        (
            cfg.metrics,
            cfg.park_max_total_bytes,
            cfg.interval,
            cfg.count
        ),
        (None, None, None, None)
    );
}

#[test]
fn a_flag_wins_over_the_file_and_the_file_over_the_default() {
    let from_file = file(
        "iface = [\"eth1\", \"eth2\"]\nlease-ms = 5000\ndrain-ms = 10\nkeep-attached = true\nmode = \"skb\"\n",
    );
    let cfg = flags(&[
        "--iface",
        "eth9",
        "--lease-ms",
        "300",
        "--keep-attached=false",
    ])
    .over(from_file)
    .resolve()
    .unwrap();
    assert_eq!(cfg.ifaces, ["eth9"], "the flag's list replaces the file's");
    assert_eq!(cfg.lease_ms, 300);
    assert!(
        !cfg.keep_attached,
        "--keep-attached=false turns off the file's true"
    );
    assert_eq!(cfg.drain_ms, 10, "the file's key where no flag is given");
    assert_eq!(cfg.mode, AttachMode::Skb);
    assert_eq!(cfg.settle_ms, DEFAULT_SETTLE_MS);
    let on = flags(&["--keep-attached"])
        .over(file("iface = [\"a\"]"))
        .resolve()
        .unwrap();
    assert!(on.keep_attached, "a bare boolean flag is true");
}

#[test]
fn every_flag_is_a_key_of_the_file() {
    // One file setting every key to something that is not its default.
    let text = r#"
        iface = ["eth3"]
        mode = "native"
        forward-path = "tc"
        datapath-log = "debug"
        socket = "/s"
        socket-group = "adm"
        socket-group-read-only = true
        pin-dir = "/sys/fs/bpf/x"
        state-dir = "/st"
        metrics = "127.0.0.1:1"
        keep-attached = true
        park-limit-frames = 7
        park-limit-bytes = 8
        park-max-total-bytes = 9
        ring-bytes = 8192
        drain-ms = 11
        settle-ms = 12
        lease-ms = 130
        replay-rate = 14
        replay-burst = 15
        interval = 1.5
        count = 17
    "#;
    let settings = file(text);
    let keys: Vec<String> = Flags::command()
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .map(|a| a.get_long().unwrap().to_string())
        .filter(|k| k != "help")
        .collect();
    assert_eq!(keys.len(), 22, "{keys:?}");
    for key in &keys {
        assert!(
            text.contains(&format!("\n        {key} = ")),
            "no key {key} in the test's file"
        );
    }
    let cfg = settings.clone().resolve().unwrap();
    assert_eq!(
        cfg,
        AgentConfig {
            ifaces: vec!["eth3".into()],
            mode: AttachMode::Native,
            forward_path: ForwardPathChoice::Tc,
            datapath_log: DatapathLog::Debug,
            socket: "/s".into(),
            socket_group: Some("adm".into()),
            socket_group_read_only: true,
            pin_dir: "/sys/fs/bpf/x".into(),
            state_dir: "/st".into(),
            metrics: Some("127.0.0.1:1".parse().unwrap()),
            keep_attached: true,
            park_limit_frames: 7,
            park_limit_bytes: 8,
            park_max_total_bytes: Some(9),
            ring_bytes: 8192,
            drain_ms: 11,
            settle_ms: 12,
            lease_ms: 130,
            replay_rate: 14,
            replay_burst: 15,
            interval: Some(1.5),
            count: Some(17),
        }
    );
    // Each key set by the file alone reaches the config; over an empty
    // command line nothing changes.
    assert_eq!(flags(&[]).over(settings.clone()).resolve().unwrap(), cfg);
    // What check-config prints reads back as the same config.
    assert_eq!(file(&cfg.to_toml()).resolve().unwrap(), cfg);
}

#[test]
fn the_shipped_file_names_every_key_with_its_default() {
    assert_eq!(
        file(SHIPPED),
        Settings::default(),
        "every key is commented out"
    );
    let on = file(&shipped_uncommented());
    let keys = Flags::command()
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "help"))
        .count();
    let text = toml::to_string(&on).unwrap();
    assert_eq!(
        text.lines().count(),
        keys,
        "one line per key, every key:\n{text}"
    );
    let shipped = on.clone().resolve().unwrap();
    // The keys without a default show examples; the rest must equal the defaults.
    let defaults = Settings {
        iface: on.iface.clone(),
        socket_group: on.socket_group.clone(),
        metrics: on.metrics,
        park_max_total_bytes: on.park_max_total_bytes,
        interval: on.interval,
        count: on.count,
        ..Settings::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(shipped, defaults);
}

#[test]
fn a_bad_file_is_refused_with_line_column_and_reason() {
    let unknown = parse_file("mode = \"skb\"\n\nlease_ms = 500\n").unwrap_err();
    assert_eq!((unknown.line, unknown.column), (3, 1), "{unknown}");
    assert!(
        unknown.message.contains("unknown field `lease_ms`"),
        "{unknown}"
    );

    let range = parse_file("iface = [\"eth0\"]\n  lease-ms = 50\n").unwrap_err();
    assert_eq!((range.line, range.column), (2, 14), "{range}");
    assert!(
        range.message.contains("must be from 100 to 3600000"),
        "{range}"
    );

    let kind = parse_file("drain-ms = \"2s\"\n").unwrap_err();
    assert_eq!(kind.line, 1, "{kind}");
    assert!(kind.message.contains("invalid type"), "{kind}");

    let negative = parse_file("settle-ms = -1\n").unwrap_err();
    assert_eq!(negative.line, 1, "{negative}");

    let ring = parse_file("ring-bytes = 5000\n").unwrap_err();
    assert!(ring.message.contains("power of two"), "{ring}");
    let name = parse_file("iface = [\"eth0\", \"a/b\"]\n").unwrap_err();
    assert!(name.message.contains("not an interface name"), "{name}");
    let mode = parse_file("mode = \"fast\"\n").unwrap_err();
    assert!(mode.message.contains("unknown attach mode"), "{mode}");
    let zero = parse_file("park-limit-frames = 0\n").unwrap_err();
    assert!(zero.message.contains("at least 1"), "{zero}");
    let syntax = parse_file("iface = [\"eth0\"\n").unwrap_err();
    assert_eq!(syntax.line, 1, "{syntax}");
    assert!(
        parse_file("interval = 0\n")
            .unwrap_err()
            .message
            .contains("positive")
    );
}

#[test]
fn flags_refuse_what_the_file_refuses() {
    for (args, words) in [
        (&["--lease-ms", "50"][..], "must be from 100 to 3600000"),
        (&["--park-limit-bytes", "0"], "at least 1"),
        (&["--ring-bytes", "5000"], "power of two"),
        (&["--interval", "0"], "positive"),
        (&["--iface", "a b"], "not an interface name"),
        (&["--mode", "fast"], "unknown attach mode"),
    ] {
        let e = flag_error(args);
        assert!(e.contains(words), "{args:?}: {e}");
    }
}

#[test]
fn rules_between_settings_hold_whichever_source_gave_them() {
    let none = Settings::default().resolve().unwrap_err();
    assert!(
        none.contains("--iface") && none.contains("iface = "),
        "{none}"
    );
    let read_only = flags(&["--socket-group-read-only"])
        .over(file("iface = [\"e\"]"))
        .resolve();
    assert!(read_only.unwrap_err().contains("socket-group"));
    let read_only = flags(&["--socket-group", "adm"])
        .over(file("iface = [\"e\"]\nsocket-group-read-only = true"))
        .resolve()
        .unwrap();
    assert!(read_only.socket_group_read_only);
    let count = flags(&["--count", "2"])
        .over(file("iface = [\"e\"]"))
        .resolve();
    assert!(count.unwrap_err().contains("interval"));
    assert!(
        flags(&["--count", "2"])
            .over(file("iface = [\"e\"]\ninterval = 1"))
            .resolve()
            .is_ok()
    );
    let empty = file("iface = []").resolve().unwrap_err();
    assert!(empty.contains("no interface"), "{empty}");
}

#[test]
fn load_tells_a_missing_named_file_from_a_missing_default() {
    let dir = std::env::temp_dir().join(format!("migr-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("absent.toml");
    let e = load(Some(&missing)).unwrap_err();
    assert!(format!("{e:#}").contains("absent.toml"), "{e:#}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "iface = [\"eth0\"]\nreplay-rate = true\n").unwrap();
    let e = format!("{:#}", load(Some(&bad)).unwrap_err());
    assert!(e.contains(&format!("{}:2:15:", bad.display())), "{e}");
    let good = dir.join("good.toml");
    std::fs::write(&good, "iface = [\"eth0\"]\n").unwrap();
    let (settings, path) = load(Some(&good)).unwrap();
    assert_eq!(path.as_deref(), Some(good.as_path()));
    assert_eq!(settings.iface.unwrap()[0].0, "eth0");
    std::fs::remove_dir_all(&dir).unwrap();
}
