//! Restarts: checkpoints resume exactly where delivery stopped; a damaged checkpoint file
//! is reported and ignored (the files are read again, no crash); a file whose inode now
//! holds other content is read from its start; a file renamed while flaghook was stopped
//! is recognised.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::harness::*;

/// A file source over `logs/*.json` feeding sink `webhook` at `hook`.
fn pipeline(ws: &Workspace, hook: &Endpoint) -> PathBuf {
    std::fs::create_dir_all(ws.path("logs")).unwrap();
    ws.config(&format!(
        r#"[sources.goff]
type = "file"
include = [{glob}]

[sinks.webhook]
type = "webhook"
inputs = ["goff"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = 40
"#,
        glob = toml_str(ws.path("logs/*.json")),
        url = toml_str(hook.url()),
    ))
}

/// `run --once`, expecting exit 0 and `delivered` events.
#[track_caller]
fn run_delivering(config: &std::path::Path, delivered: u64) -> Output {
    let out = run_once(config);
    out.assert_code(0);
    assert_eq!(out.summary().events_delivered, delivered, "{out}");
    out
}

/// How often each id of `ids` arrived.
fn counts(hook: &Endpoint, ids: std::ops::Range<u64>) -> Vec<u32> {
    hook.with(|t| {
        ids.map(|id| t.counts.get(id as usize).copied().unwrap_or(0))
            .collect()
    })
}

#[test]
fn checkpoints_resume_exactly_after_each_run() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let config = pipeline(&ws, &hook);
    let log = ws.path("logs/a.json");
    write_small_events(&log, 0..100);

    run_delivering(&config, 100);
    let saved = checkpoint_files(&ws.data_dir(), "goff").expect("a checkpoint was written");
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(saved[0]["offset"], std::fs::metadata(&log).unwrap().len());
    assert_eq!(saved[0]["ino"], std::fs::metadata(&log).unwrap().ino());

    append(&log, small_lines(100..150));
    run_delivering(&config, 50);
    run_delivering(&config, 0);
    assert_eq!(
        counts(&hook, 0..150),
        vec![1; 150],
        "each event exactly once"
    );
    assert_eq!(hook.with(|t| t.counts.len()), 150);
}

#[test]
fn a_file_renamed_while_stopped_resumes_under_its_new_name() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let config = pipeline(&ws, &hook);
    write_small_events(&ws.path("logs/current.json"), 0..60);
    run_delivering(&config, 60);

    std::fs::rename(ws.path("logs/current.json"), ws.path("logs/rotated-1.json")).unwrap();
    append(&ws.path("logs/rotated-1.json"), small_lines(60..70));
    write_small_events(&ws.path("logs/current.json"), 70..80);
    run_delivering(&config, 20);
    assert_eq!(counts(&hook, 0..80), vec![1; 80], "each event exactly once");
}

#[test]
fn damaged_checkpoint_files_are_reported_and_the_files_read_again() {
    let damaged: [(&str, &[u8]); 4] = [
        ("empty", b""),
        ("garbage", b"\0\xff{not json at all"),
        ("cut short", br#"{"version":1,"files":[{"dev":1,"ino":"#),
        ("unknown version", br#"{"version":99,"files":[]}"#),
    ];
    for (what, bytes) in damaged {
        let hook = Endpoint::start();
        let ws = Workspace::new();
        let config = pipeline(&ws, &hook);
        write_small_events(&ws.path("logs/a.json"), 0..30);
        run_delivering(&config, 30);

        std::fs::write(checkpoint_path(&ws.data_dir(), "goff"), bytes).unwrap();
        let out = run_delivering(&config, 30);
        assert!(
            out.stderr.contains("checkpoint"),
            "{what} checkpoint: not reported:\n{out}"
        );
        assert_eq!(
            counts(&hook, 0..30),
            vec![2; 30],
            "{what} checkpoint: the file is read again from the start"
        );
        // The damaged file was replaced by a good one: a third run sends nothing.
        run_delivering(&config, 0);
        let saved = checkpoint_files(&ws.data_dir(), "goff").unwrap();
        assert_eq!(saved.len(), 1, "{what}: {saved:?}");
    }
}

#[test]
fn same_inode_with_other_content_is_read_from_the_start() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let config = pipeline(&ws, &hook);
    let log = ws.path("logs/a.json");
    write_small_events(&log, 0..100);
    run_delivering(&config, 100);
    let ino = std::fs::metadata(&log).unwrap().ino();

    // Rewritten in place (same inode), longer than the saved offset: only the content
    // check can tell this is not the file the checkpoint describes.
    write_small_events(&log, 1000..1150);
    assert_eq!(std::fs::metadata(&log).unwrap().ino(), ino);
    run_delivering(&config, 150);
    assert_eq!(counts(&hook, 1000..1150), vec![1; 150]);

    // Rewritten shorter than the saved offset.
    write_small_events(&log, 2000..2010);
    assert_eq!(std::fs::metadata(&log).unwrap().ino(), ino);
    run_delivering(&config, 10);
    assert_eq!(counts(&hook, 2000..2010), vec![1; 10]);

    assert_eq!(
        counts(&hook, 0..100),
        vec![1; 100],
        "old content sent again"
    );
}

#[test]
fn a_deleted_file_replaced_by_a_new_one_is_read_from_the_start() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let config = pipeline(&ws, &hook);
    let log = ws.path("logs/a.json");
    write_small_events(&log, 0..100);
    run_delivering(&config, 100);
    let old_ino = std::fs::metadata(&log).unwrap().ino();

    std::fs::remove_file(&log).unwrap();
    write_small_events(&log, 500..620);
    let reused = std::fs::metadata(&log).unwrap().ino() == old_ino;
    println!("inode reused by the new file: {reused}");
    run_delivering(&config, 120);
    assert_eq!(counts(&hook, 500..620), vec![1; 120]);
    assert_eq!(counts(&hook, 0..100), vec![1; 100]);
}
