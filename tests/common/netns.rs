//! A network namespace made by a test (`ip netns add`), deleted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{BIN, Out, require};

/// A network namespace made by the test, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        require("ip");
        let name = format!("rnt-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed");
        let ns = NetNs { name };
        assert!(
            ns.exec(&["ip", "link", "set", "lo", "up"])
                .status()
                .is_ok_and(|s| s.success())
        );
        ns
    }

    pub fn exec(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        c
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn somaxconn(&self) -> String {
        let o = self
            .exec(&["cat", "/proc/sys/net/core/somaxconn"])
            .output()
            .expect("cat");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn set_somaxconn(&self, v: &str) {
        let st = self
            .exec(&[
                "sh",
                "-c",
                &format!("echo {v} > /proc/sys/net/core/somaxconn"),
            ])
            .status();
        assert!(st.is_ok_and(|s| s.success()));
        assert_eq!(self.somaxconn(), v);
    }

    /// redis-node-tuner run inside the namespace, with its own state dir.
    pub fn tuner(&self, state: &Path, args: &[&str]) -> Out {
        let mut c = self.exec(&[BIN, "--state-dir", &state.to_string_lossy()]);
        c.args(args);
        Out::of(c.output().expect("spawn redis-node-tuner"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
