//! A file source with more files than the soft limit of open files. Each tailed file holds
//! a descriptor; the sinks' connections and the checkpoints need some too.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::harness::*;

/// The soft limit of open files flaghook is started with (its hard limit is higher).
const SOFT_LIMIT: libc::rlim_t = 256;
/// More files than `SOFT_LIMIT`, each with two events.
const FILES: u64 = 400;

/// Regression: with a soft limit of 1024 (systemd's default) and a thousand files, the file
/// source opened files until none were left: no request could connect and no checkpoint be
/// written, so nothing was ever delivered. flaghook raises its soft limit to the hard one.
#[test]
fn more_files_than_the_soft_open_files_limit_are_all_delivered() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    for f in 0..FILES {
        ws.write(&format!("logs/f{f:04}.json"), small_lines(f * 2..f * 2 + 2));
    }
    let config = ws.glob_pipeline(
        "logs/*.json",
        "",
        &hook.url(),
        "flush_interval = \"50ms\"\nmax_event_in_memory = 200\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \"200ms\"",
    );
    let mut cmd = run_cmd(&config);
    // The hard limit as it is, at most 4096: raising it needs privileges a runner may lack.
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the one struct passed by reference.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) },
        0
    );
    let hard = current.rlim_max.min(4096);
    if hard < FILES as libc::rlim_t + 200 {
        eprintln!(
            "skipped: the hard limit of open files ({hard}) leaves no room above {FILES} files"
        );
        return;
    }
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: SOFT_LIMIT,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proc = Proc::spawn(cmd);
    let all = hook.wait_until(Duration::from_secs(20), |t| t.has_all(FILES * 2));
    proc.sigterm();
    let out = proc.wait();
    hook.with(|t| {
        assert!(
            all,
            "{} of {} events delivered with {FILES} files and a soft limit of {SOFT_LIMIT}:\n{out}",
            t.distinct(),
            FILES * 2
        );
        assert_eq!(t.duplicates(), 0, "each event once");
    });
}
