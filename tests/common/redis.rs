//! A real `redis-server` (Debian's package; `.ci/run` installs it) on a free
//! loopback port with its data in a temporary folder, append-only file
//! synced on every write, a password required ([`PASSWORD`]), killed on drop;
//! and the secrets replicas are started with ([`secrets`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The password every test server requires (`requirepass`).
pub const PASSWORD: &str = "redis-test-password-0123456789";
/// The key test replicas seal their feed records with.
pub const FEED_KEY: &str = "feed-key-for-tests-0123456789abcdef-0123456789";

/// Writes the feed key and the Redis password into `dir`; returns the files
/// for `--feed-key-file` and `--feed-password-file`.
pub fn secrets(dir: &Path) -> (PathBuf, PathBuf) {
    let (key, password) = (dir.join("feed.key"), dir.join("redis.password"));
    std::fs::write(&key, format!("{FEED_KEY}\n")).expect("write the feed key");
    std::fs::write(&password, format!("{PASSWORD}\n")).expect("write the Redis password");
    (key, password)
}

/// The feed at `address`, as a replica opens it (with the password).
pub fn open_feed(address: &str) -> genrec::feed::redis::RedisFeed {
    genrec::feed::redis::RedisFeed::open(address, Some(PASSWORD.to_string())).expect("open the feed")
}

/// The test replicas' key.
pub fn key() -> genrec::feed::auth::FeedKey {
    genrec::feed::auth::FeedKey::new(FEED_KEY.as_bytes().to_vec(), "tests").expect("a long enough key")
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

/// Whether `redis-server` can be run here; without it a test skips, unless
/// `GENREC_REQUIRE_REDIS=1` (CI) makes that a failure.
pub fn available() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("GENREC_REQUIRE_REDIS").is_err(),
            "redis-server is missing (apt-get install redis-server)"
        );
        eprintln!("skipping: redis-server is not installed");
    }
    ok
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

impl RedisServer {
    /// Starts a server keeping its data (the AOF) in `dir`.
    pub fn start(dir: &Path) -> RedisServer {
        let mut r = RedisServer { child: None, port: free_port(), dir: dir.to_path_buf() };
        r.restart();
        r
    }

    /// Starts the server again on the same port and folder (after `kill`).
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("redis folder");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--requirepass", PASSWORD])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while !self.pong() {
            assert!(Instant::now() < until, "redis-server did not answer PING");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pong(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 12];
        let ask = format!("AUTH {PASSWORD}\r\nPING\r\n");
        s.write_all(ask.as_bytes()).is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+OK\r\n+PONG\r\n"
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn feed(&self, stream: &str) -> String {
        format!("redis://127.0.0.1:{}/{stream}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Catalog edits the item records of a feed hold, from its start.
pub fn edits_in_stream(feed: &dyn genrec::feed::Feed) -> u64 {
    use genrec::feed::record::Record;
    let (mut n, mut after) = (0, genrec::feed::Position::START);
    loop {
        let entries = feed.read_after(after, 1000, Duration::ZERO).expect("read the feed");
        let Some(last) = entries.last() else { return n };
        after = last.position;
        for e in &entries {
            let Ok(record) = key().open(&e.payload) else { continue };
            if let Ok(Record::Items { edits, .. }) = Record::parse(record) {
                n += edits.len() as u64;
            }
        }
    }
}
