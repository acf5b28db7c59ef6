//! Long-running `approxifer` processes (`serve`, `worker`) for the tests that run them as a
//! user would, and the address each one's banner names.
#![allow(dead_code)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running process; killed (SIGKILL) when dropped.
pub struct Running {
    child: Child,
    /// The REST address its banner names.
    pub addr: String,
    /// The gRPC address, when it listens for gRPC too.
    pub grpc: Option<String>,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

/// How a process ended.
pub struct Exit {
    pub success: bool,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Running {
    /// Starts `approxifer args` and waits for the line that says where it listens.
    pub fn start(args: &[&str]) -> Running {
        let mut command = Command::new(assert_cmd::cargo::cargo_bin("approxifer"));
        command.args(args);
        Running::spawn(command)
    }

    /// Starts `command` (an `approxifer` server, perhaps behind a wrapper such as
    /// `ip netns exec`) and waits for the line that says where it listens.
    pub fn spawn(mut command: Command) -> Running {
        let what = format!("{command:?}");
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                // "... on http://HOST:PORT[, gRPC on HOST:PORT]: ..."
                let address = |text: &str| {
                    let (host, rest) = text.split_once(':')?;
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    Some(format!("{host}:{port}"))
                };
                if let Some(rest) = line.split_once(" on http://").and_then(|(_, r)| address(r)) {
                    let grpc = line.split_once(", gRPC on ").and_then(|(_, r)| address(r));
                    let _ = tx.send((rest, grpc));
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let Ok((addr, grpc)) = rx.recv_timeout(Duration::from_secs(120)) else {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            panic!("{what} did not start:\n{}", stderr.lock().unwrap());
        };
        Running { child, addr, grpc, stderr, reader: Some(reader) }
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, as a service manager stops it; how it exited.
    pub fn terminate(mut self) -> Exit {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let success = self.child.wait().unwrap().success();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = self.stderr.lock().unwrap().clone();
        Exit { success, stderr }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
