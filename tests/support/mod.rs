//! Test servers for the connector tests: each one runs on 127.0.0.1 only, on a free port of its
//! own, with its data in a temporary directory, and is killed when dropped.
//!
//! Missing server binaries fail the test with a message pointing at `scripts/test.sh`, which
//! installs them. Add more servers as their own struct below (each self-contained).
#![allow(dead_code)]

pub mod http;
pub mod tansu;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Copies the shipped rule tables (`rules/*.toml`; not the MySQL schema under
/// `rules/mysql/`) into `to`, for tests that edit rules.
pub fn copy_rules(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a test server to bind.
///
/// Why not port 0: the kernel hands out ports 0 from its ephemeral range, the same range it
/// takes the local ports of outgoing connections from. Between this function and the
/// server's bind, any client in the test run (a Kafka producer, a MySQL client) could take
/// the port; CI saw mariadbd fail with "Address already in use" that way. Ports below the
/// ephemeral range are never given to outgoing connections, so a port picked there stays
/// free unless another test picks it, which the process-wide counter prevents.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = below_ephemeral_ports();
    let span = u32::from(high - low);
    // Different test binaries (run one after another) start at different places, so a
    // server still closing from the previous binary is unlikely to be in the way.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}")
}

/// Ports `low..high` below the kernel's ephemeral range (`ip_local_port_range`), and above
/// the well-known and commonly configured ones.
fn below_ephemeral_ports() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(
        ephemeral_low > 12000,
        "the ephemeral port range starts at {ephemeral_low}: the test servers need ports \
         10000..{ephemeral_low} that outgoing connections cannot take; raise \
         net.ipv4.ip_local_port_range's lower bound"
    );
    (10000, ephemeral_low)
}

/// Finds a server binary on the PATH or in the sbin directories (Debian puts daemons there).
pub fn find_binary(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found (PATH, /usr/sbin): these tests need a real server; scripts/test.sh installs it (apt package {package})"
    );
}

/// The last `n` lines of a log file, for start-up failure messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn kill_child(child: &mut Option<Child>, graceful: bool) {
    if let Some(mut c) = child.take() {
        if graceful {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            if wait_until(Duration::from_secs(15), || {
                matches!(c.try_wait(), Ok(Some(_)))
            }) {
                return;
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A throw-away `redis-server` (no persistence) on 127.0.0.1.
pub struct RedisServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut s = RedisServer {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            child: None,
        };
        s.start_again();
        s
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// (Re)starts the server on the same port (after [`RedisServer::stop`]); it comes back
    /// empty.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let bin = find_binary("redis-server", "redis-server");
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        if !wait_until(Duration::from_secs(20), || redis_ping(port)) {
            let tail = log_tail(&self.log_path(), 30);
            kill_child(&mut self.child, false);
            panic!("redis-server on 127.0.0.1:{port} did not answer PING within 20 s; log tail:\n{tail}");
        }
    }

    /// Kills the server (the port stays reserved for [`RedisServer::start_again`]).
    pub fn stop(&mut self) {
        kill_child(&mut self.child, false);
        let port = self.port;
        wait_until(Duration::from_secs(10), || !redis_ping(port));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A fresh client connection (for checks in tests).
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("cannot connect to the test redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill_child(&mut self.child, false);
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A throw-away MariaDB server on 127.0.0.1 with the database `antispider` created and
/// `rules/mysql/schema.sql` and `seed.sql` applied. The user `antispider` (password
/// [`MariaDb::PASSWORD`]) owns the database; `root` (no password) is reachable through the
/// server's socket for test set-up via [`MariaDb::sql`].
pub struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl MariaDb {
    pub const USER: &'static str = "antispider";
    pub const PASSWORD: &'static str = "antispider-test-pw";

    /// Initialises a data directory, starts the server, creates the database and user and
    /// applies the schema and seed. Panics with the server's log tail on failure.
    pub fn start() -> MariaDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let install = find_binary("mariadb-install-db", "mariadb-server");
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            // Its own temp dir: bootstraps of parallel tests sharing /tmp were seen to remove
            // each other's temporary tables ("Unknown table 'mysql.tmp_user_sys'").
            .arg(format!("--tmpdir={}", dir.path().display()));
        if is_root() {
            cmd.arg("--user=root");
        }
        let out = cmd.output().expect("cannot run mariadb-install-db");
        if !out.status.success() {
            panic!(
                "mariadb-install-db failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut db = MariaDb {
            dir,
            port: free_port(),
            child: None,
        };
        db.start_again();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        db.sql(&format!(
            "CREATE DATABASE antispider CHARACTER SET utf8mb4;
             CREATE USER '{u}'@'%' IDENTIFIED BY '{p}';
             CREATE USER '{u}'@'localhost' IDENTIFIED BY '{p}';
             GRANT ALL ON antispider.* TO '{u}'@'%';
             GRANT ALL ON antispider.* TO '{u}'@'localhost';",
            u = Self::USER,
            p = Self::PASSWORD
        ));
        for f in ["rules/mysql/schema.sql", "rules/mysql/seed.sql"] {
            let text = std::fs::read_to_string(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            db.sql_in("antispider", &text);
        }
        db
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("err.log")
    }

    /// (Re)starts the server on the same port and data directory.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "mariadbd is already running");
        let bin = find_binary("mariadbd", "mariadb-server");
        let d = self.dir.path();
        let mut cmd = Command::new(bin);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", self.log_path().display()))
            .arg(format!("--tmpdir={}", d.display()))
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=16M")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(cmd.spawn().expect("cannot spawn mariadbd"));
        let mut exited = false;
        let ok = wait_until(Duration::from_secs(60), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    // Gone (e.g. its port was taken): the log says why; no use waiting.
                    exited = true;
                    return true;
                }
            }
            self.client(None)
                .args(["-e", "SELECT 1"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        if !ok || exited {
            let tail = log_tail(&self.log_path(), 40);
            kill_child(&mut self.child, false);
            let how = if exited {
                "exited"
            } else {
                "did not accept connections within 60 s"
            };
            panic!(
                "mariadbd on 127.0.0.1:{} {how}; log tail:\n{tail}",
                self.port
            );
        }
    }

    /// Shuts the server down (SIGTERM, then SIGKILL after 15 s).
    pub fn stop(&mut self) {
        kill_child(&mut self.child, true);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://antispider@127.0.0.1:<port>/antispider` (the password comes from the
    /// environment, see [`MariaDb::PASSWORD`]).
    pub fn url(&self) -> String {
        format!(
            "mysql://{}@127.0.0.1:{}/antispider?prefer_socket=false",
            Self::USER,
            self.port
        )
    }

    fn client(&self, database: Option<&str>) -> Command {
        let mut c = Command::new(find_binary("mariadb", "mariadb-client"));
        c.arg("--no-defaults")
            .arg("-uroot")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--batch", "--skip-column-names"]);
        if let Some(db) = database {
            c.arg(db);
        }
        c
    }

    /// Runs SQL as root (no database selected); returns stdout; panics on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.run(None, sql)
    }

    /// Runs SQL as root in `database`; returns stdout (tab-separated, no header).
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        self.run(Some(database), sql)
    }

    fn run(&self, database: Option<&str>, sql: &str) -> String {
        let mut child = self
            .client(database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run the mariadb client");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .expect("write SQL");
        let out = child.wait_with_output().expect("mariadb client");
        if !out.status.success() {
            panic!(
                "SQL failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                sql.chars().take(500).collect::<String>()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        kill_child(&mut self.child, false);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Waits for a child, killing it at `deadline`; returns (success, stderr).
pub fn wait_child(mut child: Child, deadline: Instant) -> (bool, String) {
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
