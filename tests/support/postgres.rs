//! A private PostgreSQL server owned by one test (initdb in a temporary folder, a free port),
//! so the test can restart it without disturbing others. Uses the machine's PostgreSQL binaries
//! (`VISA_TEST_PG_BIN`, else `pg_ctl` on PATH or `/usr/lib/postgresql/*/bin`); as root it runs
//! them as the `postgres` user. Skipped (`None`) without them, unless `VISA_REQUIRE_SERVICES`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn find_bin() -> Option<PathBuf> {
    if let Ok(b) = std::env::var("VISA_TEST_PG_BIN") {
        return Some(b.into());
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        candidates.extend(dirs.flatten().map(|d| d.path().join("bin")));
    }
    candidates
        .into_iter()
        .find(|d| d.join("pg_ctl").exists() && d.join("initdb").exists())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PrivatePostgres {
    pub fn start() -> Option<Self> {
        let Some(bin) = find_bin() else {
            assert!(
                std::env::var_os("VISA_REQUIRE_SERVICES").is_none(),
                "VISA_REQUIRE_SERVICES is set but no PostgreSQL binaries were found"
            );
            eprintln!("skipped: no PostgreSQL binaries (initdb, pg_ctl)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(dir.path()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            bin,
            data,
            port,
            _dir: dir,
        };
        run(pg.command("initdb").arg("-D").arg(&pg.data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]));
        pg.pg_ctl("start");
        Some(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, action: &str) {
        let socket_dir = self.data.parent().unwrap_or(Path::new("/tmp"));
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "30", "-m", "fast", "-l"])
            .arg(socket_dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                socket_dir.display()
            ))
            .arg(action));
    }

    /// Stop the server (fast shutdown: open connections are closed) and start it again.
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
