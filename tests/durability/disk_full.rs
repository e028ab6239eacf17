//! A full disk under data_dir: the journal cannot be written, so the TCP source stops
//! reading (the shipper is pushed back), says why once, and reads again when space returns;
//! nothing journaled is lost. data_dir is a small tmpfs mounted for the test, which needs
//! the right to mount (root): elsewhere the test is skipped with a note.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::*;

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes at `at`; `Err` says why it could not.
    fn mount(at: &Path, size: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let target = CString::new(at.as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: mount(2) with valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: umount2(2) with a valid NUL-terminated path; lazy, so that nothing blocks.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill_disk(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.write_all(&[0]);
}

const EVENTS: u64 = 20_000;
const MESSAGE: &str = "cannot write the journal";

#[test]
fn a_full_disk_stops_the_tcp_source_until_space_returns_and_loses_nothing() {
    let ws = Workspace::new();
    let _tmpfs = match Tmpfs::mount(&ws.data_dir(), 8 << 20) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            println!("skipped: cannot mount a tmpfs for data_dir ({why}); this test needs root");
            return;
        }
    };
    let hook = Endpoint::start();
    let (config, address) = ws.tcp_pipeline(
        &hook.url(),
        "",
        "flush_interval = \"100ms\"\nmax_event_in_memory = 1000",
    );
    let proc = Proc::spawn(run_cmd(&config));
    let mut conn = connect(&address, &proc);
    // data_dir is ready: fill what is left of it.
    let filler = ws.data_dir().join("filler");
    fill_disk(&filler);

    let sender = std::thread::spawn(move || {
        conn.write_all(small_lines(0..EVENTS).as_bytes()).unwrap();
        conn
    });
    assert!(
        proc.wait_stderr(MESSAGE, WAIT).is_some(),
        "the full disk was not reported:\n{}",
        proc.stderr_now()
    );
    // While the disk is full nothing is read, so nothing is delivered; the sender waits.
    std::thread::sleep(Duration::from_millis(500));
    let delivered = hook.with(|t| t.distinct());
    assert!(
        delivered < EVENTS,
        "all {EVENTS} events went through a full disk"
    );

    std::fs::remove_file(&filler).unwrap();
    let complete = hook.wait_until(WAIT, |t| t.has_all(EVENTS));
    let conn = sender.join().unwrap();
    drop(conn);
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(
        complete,
        "not every event arrived once space returned:\n{out}"
    );
    assert_eq!(
        out.stderr.matches(MESSAGE).count(),
        1,
        "the full disk is logged once:\n{out}"
    );
    assert!(
        out.stderr.contains("the journal is written again"),
        "the recovery is not logged:\n{out}"
    );
    hook.with(|t| assert_eq!(t.counts.len() as u64, EVENTS));
}
