//! The Standard Webhooks reference libraries, which nobody here wrote, as verifiers of
//! flaghook's requests: PyPI `standardwebhooks` (Python) and npm `standardwebhooks`
//! (Node.js), installed once per target directory under `target/tmp/standardwebhooks/`
//! with the registries' own clients (pip, npm), pinned to known versions.
//!
//! A library that cannot be installed skips the tests on a developer's machine (with a
//! note) and fails them in CI (`CI` set), where the registries are reachable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::json;

use super::endpoint::Recorded;

const PYPI: &str = "standardwebhooks==1.1.0";
const NPM: &str = "standardwebhooks@1.1.1";

/// Verifies with `Webhook(secret).verify(body, headers)`; "now" is shifted by `shift`
/// seconds (the libraries read the system clock; shifting it in the verifier process is how
/// a replay minutes later is made without waiting).
const PYTHON_VERIFIER: &str = r#"
import base64, json, os, sys
from datetime import timedelta
import standardwebhooks.webhooks as swh

real = swh.datetime
for case in json.load(open(sys.argv[1])):
    class Shifted(real):
        @classmethod
        def now(cls, tz=None):
            return real.now(tz) + timedelta(seconds=case["shift"])
    swh.datetime = Shifted
    try:
        swh.Webhook(os.environ["SWH_SECRET"]).verify(base64.b64decode(case["body"]), case["headers"])
        print("ok")
    except Exception as e:
        print("error: %s: %s" % (type(e).__name__, e))
"#;

const NODE_VERIFIER: &str = r#"
const { Webhook } = require("standardwebhooks");
const fs = require("fs");
const realNow = Date.now;
for (const c of JSON.parse(fs.readFileSync(process.argv[1]))) {
  Date.now = () => realNow() + c.shift * 1000;
  try {
    new Webhook(process.env.SWH_SECRET).verify(Buffer.from(c.body, "base64"), c.headers);
    console.log("ok");
  } catch (e) {
    console.log("error: " + e.name + ": " + e.message);
  }
}
"#;

/// One reference library, installed.
#[derive(Debug)]
pub struct Library {
    pub name: &'static str,
    /// PYTHONPATH (Python) or NODE_PATH (Node.js).
    path: PathBuf,
}

/// The libraries that could be installed; None (skip, outside CI) when neither could.
pub fn reference_libraries() -> Option<&'static [Library]> {
    static LIBS: OnceLock<Vec<Library>> = OnceLock::new();
    let libs = LIBS.get_or_init(install);
    (!libs.is_empty()).then_some(libs.as_slice())
}

fn install() -> Vec<Library> {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("standardwebhooks");
    std::fs::create_dir_all(&root).unwrap();
    let mut libs = Vec::new();
    let mut missing = Vec::new();
    let python = installed(
        &root.join("pypi-1.1.0"),
        "standardwebhooks/webhooks.py",
        |dir| {
            let mut cmd = Command::new("python3");
            cmd.args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-input", "--target"])
            .arg(dir)
            .arg(PYPI)
            // Debian's pip refuses --target into a "managed" Python without it; older
            // pips ignore the variable.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1");
            cmd
        },
    );
    match python {
        Ok(path) => libs.push(Library {
            name: "PyPI standardwebhooks 1.1.0",
            path,
        }),
        Err(why) => missing.push(format!("PyPI {PYPI}: {why}")),
    }
    let node = installed(
        &root.join("npm-1.1.1"),
        "node_modules/standardwebhooks/package.json",
        |dir| {
            let mut cmd = Command::new("npm");
            cmd.args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(dir)
                .arg(NPM);
            cmd
        },
    );
    match node {
        Ok(path) => libs.push(Library {
            name: "npm standardwebhooks 1.1.1",
            path: path.join("node_modules"),
        }),
        Err(why) => missing.push(format!("npm {NPM}: {why}")),
    }
    if !missing.is_empty() {
        if std::env::var_os("CI").is_some() {
            panic!("cannot install the Standard Webhooks reference libraries: {missing:?}");
        }
        eprintln!("note: not verified with {missing:?} (not installable here; CI installs them)");
    }
    libs
}

/// `dir` once `marker` is in it: installed by `command(tmp)` into a folder of this process,
/// then moved into place, so that test binaries running at once never see half of it.
fn installed(
    dir: &Path,
    marker: &str,
    command: impl FnOnce(&Path) -> Command,
) -> Result<PathBuf, String> {
    if dir.join(marker).exists() {
        return Ok(dir.to_owned());
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let out = command(&tmp)
        .output()
        .map_err(|e| format!("cannot run the installer: {e}"))?;
    if !out.status.success() || !tmp.join(marker).exists() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "install failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Another binary may have won the race: its copy is as good.
    if std::fs::rename(&tmp, dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dir.to_owned())
}

/// A request to verify: the body as received and its three Standard Webhooks headers,
/// checked as if it arrived `shift` seconds after now.
#[derive(Debug, Clone)]
pub struct Case {
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub shift: i64,
}

impl Case {
    /// A request the endpoint recorded, as it came.
    pub fn of(request: &Recorded) -> Self {
        let headers = ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .filter_map(|name| Some((name.to_string(), request.header(name)?.to_owned())))
            .collect();
        Case {
            body: request.body.to_vec(),
            headers,
            shift: 0,
        }
    }

    pub fn shifted(mut self, seconds: i64) -> Self {
        self.shift = seconds;
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl Library {
    /// What the library says of each case: "ok" or "error: ...".
    pub fn verify(&self, secret: &str, cases: &[Case], workdir: &Path) -> Vec<String> {
        let python = self.name.starts_with("PyPI");
        let input = workdir.join(if python {
            "cases-py.json"
        } else {
            "cases-node.json"
        });
        let cases_json: Vec<_> = cases
            .iter()
            .map(|c| {
                json!({
                    "body": base64::engine::general_purpose::STANDARD.encode(&c.body),
                    "headers": c
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect::<serde_json::Map<_, _>>(),
                    "shift": c.shift,
                })
            })
            .collect();
        std::fs::write(&input, serde_json::to_vec(&cases_json).unwrap()).unwrap();
        let mut cmd = if python {
            let mut cmd = Command::new("python3");
            cmd.arg("-c").arg(PYTHON_VERIFIER).arg(&input);
            cmd.env("PYTHONPATH", &self.path);
            cmd
        } else {
            let mut cmd = Command::new("node");
            cmd.arg("-e").arg(NODE_VERIFIER).arg("--").arg(&input);
            cmd.env("NODE_PATH", &self.path);
            cmd
        };
        let out = cmd.env("SWH_SECRET", secret).output().unwrap();
        assert!(
            out.status.success(),
            "{} verifier failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(lines.len(), cases.len(), "{}: {lines:?}", self.name);
        lines
    }
}
