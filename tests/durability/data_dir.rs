//! data_dir holds user keys and payloads: its files are private, and a symlink planted in
//! it is never followed (not to read another file as events, not to overwrite one).

use std::os::unix::fs::{symlink, PermissionsExt};

use crate::harness::*;

#[test]
fn a_spill_file_that_is_a_symlink_is_not_read_as_events() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(jsonl(&feature_events(0, 2)), &server.url(), "");
    // Lines another user's file holds, planted as this sink's spill file.
    let secret = ws.write("shadow.json", jsonl(&feature_events(100, 3)));
    std::fs::create_dir_all(ws.data_dir().join("spill")).unwrap();
    symlink(&secret, ws.data_dir().join("spill/webhook.jsonl")).unwrap();
    let before = std::fs::read(&secret).unwrap();

    let out = run_once(&config);
    let mut got = server.delivered();
    got.sort();
    assert_eq!(got, feature_events(0, 2), "{out}");
    assert!(
        out.stderr.contains("symlink"),
        "the link is not reported:\n{out}"
    );
    assert_eq!(std::fs::read(&secret).unwrap(), before);
}

#[test]
fn the_write_probe_does_not_truncate_a_linked_file() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(jsonl(&feature_events(0, 1)), &server.url(), "");
    let victim = ws.write("victim.txt", "precious\n");
    std::fs::create_dir_all(ws.data_dir()).unwrap();
    symlink(&victim, ws.data_dir().join(".write-test")).unwrap();
    run_once(&config).assert_code(0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn data_dir_is_private_whatever_the_umask() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let mut lines = jsonl(&feature_events(0, 2));
    lines.push_str("not json\n");
    let config = ws.file_pipeline(lines, &server.url(), "");
    let mut cmd = run_once_cmd(&config);
    // SAFETY: umask is async-signal-safe; it sets the child's file-creation mask.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    Proc::spawn(cmd).wait().assert_code(2);
    let mode = |p: &str| {
        std::fs::metadata(ws.data_dir().join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for dir in ["checkpoints", "dead-letter", "journal"] {
        assert_eq!(mode(dir), 0o700, "{dir}");
    }
    assert_eq!(mode("checkpoints/in.json"), 0o600);
    assert_eq!(mode("dead-letter/webhook.jsonl"), 0o600);
}
