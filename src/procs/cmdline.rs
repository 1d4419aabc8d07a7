//! A process's command line: whether it is a Redis server, and the `tcp-backlog` it was
//! configured with.
//!
//! Redis (and Valkey) replace their command line with a process title (`set-proc-title yes`,
//! the default): `/proc/<pid>/cmdline` then reads `redis-server 127.0.0.1:6379` as one string,
//! and the original arguments (`--tcp-backlog`, the config file) are gone. Only a server that
//! keeps its command line (`set-proc-title no`, or one not started by `redis-server` itself)
//! shows them; otherwise the configured value is not knowable from outside without a
//! connection, and Redis's default, 511, is assumed and said so.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Redis's default `tcp-backlog`.
pub const DEFAULT_TCP_BACKLOG: u32 = 511;

/// A process's command line, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// The arguments as the kernel holds them.
    pub args: Vec<String>,
    /// The process replaced its arguments with a title (one string holding spaces).
    pub retitled: bool,
}

impl Cmdline {
    pub fn parse(raw: &[u8]) -> Cmdline {
        let text = String::from_utf8_lossy(raw);
        let mut args: Vec<String> = text.split('\0').map(str::to_string).collect();
        // Each argument ends with a NUL; a process title is padded with more of them.
        while args.last().is_some_and(|a| a.is_empty()) {
            args.pop();
        }
        let retitled = args.len() == 1 && args[0].contains(' ');
        Cmdline { args, retitled }
    }

    /// The base name of the program: argv[0]'s first word (a process title is
    /// `redis-server *:6379`), without its directory.
    pub fn program(&self) -> &str {
        let first = self
            .args
            .first()
            .and_then(|a| a.split_whitespace().next())
            .unwrap_or("");
        first.rsplit('/').next().unwrap_or(first)
    }
}

/// Whether a process is one of `names`: its `comm` (at most 15 bytes, so a longer name matches
/// its first 15) or the base name of argv[0]'s first word.
pub fn matches(names: &[String], comm: &str, cmd: &Cmdline) -> bool {
    let program = cmd.program();
    names.iter().any(|n| {
        let short = n.get(..15).unwrap_or(n);
        comm == short || program == n
    })
}

/// Where the configured `tcp-backlog` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BacklogSource {
    /// `--tcp-backlog N` on the command line.
    Cmdline,
    /// `tcp-backlog N` in the config file named on the command line.
    ConfigFile,
    /// Neither names it: Redis's default.
    Default,
    /// The command line was replaced by the process title: Redis's default, assumed.
    AssumedDefault,
}

impl BacklogSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BacklogSource::Cmdline => "cmdline",
            BacklogSource::ConfigFile => "config_file",
            BacklogSource::Default => "default",
            BacklogSource::AssumedDefault => "assumed_default",
        }
    }
}

/// The configured `tcp-backlog` and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpBacklog {
    pub value: u32,
    pub source: BacklogSource,
    /// A config file that was named but could not be read, or a value that did not parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The config file a Redis command line names: its first argument, when it is not an option
/// (`-` is standard input).
pub fn config_file(cmd: &Cmdline) -> Option<&str> {
    let a = cmd.args.get(1)?;
    (!a.starts_with('-')).then_some(a.as_str())
}

/// `--tcp-backlog N` on the command line (the last one wins, as in Redis).
pub fn cmdline_backlog(cmd: &Cmdline) -> Option<Result<u32, String>> {
    let mut found = None;
    let mut it = cmd.args.iter().skip(1);
    while let Some(a) = it.next() {
        if a.eq_ignore_ascii_case("--tcp-backlog") {
            found = Some(match it.next() {
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("--tcp-backlog {v:?} is not a number")),
                None => Err("--tcp-backlog without a value".to_string()),
            });
        }
    }
    found
}

/// `tcp-backlog N` in a config file's text (the last one wins; `include` is not followed).
pub fn config_backlog(text: &str) -> Option<Result<u32, String>> {
    let mut found = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("tcp-backlog"))
        {
            let v = words
                .next()
                .unwrap_or("")
                .trim_matches(|c| c == '"' || c == '\'');
            found = Some(
                v.parse()
                    .map_err(|_| format!("tcp-backlog {v:?} is not a number")),
            );
        }
    }
    found
}

/// The configured `tcp-backlog` of a process: the command line, else its config file (read
/// through `<proc>/<pid>/root`, so a container's file is found in the container), else 511.
pub fn tcp_backlog(cmd: &Cmdline, pid_dir: &Path) -> TcpBacklog {
    if cmd.retitled {
        return TcpBacklog {
            value: DEFAULT_TCP_BACKLOG,
            source: BacklogSource::AssumedDefault,
            note: Some(
                "the command line was replaced by the process title (set-proc-title yes): \
                 tcp-backlog is not visible, Redis's default 511 assumed"
                    .into(),
            ),
        };
    }
    let mut note = None;
    if let Some(r) = cmdline_backlog(cmd) {
        match r {
            Ok(value) => {
                return TcpBacklog {
                    value,
                    source: BacklogSource::Cmdline,
                    note: None,
                };
            }
            Err(e) => note = Some(e),
        }
    }
    if let Some(file) = config_file(cmd).filter(|f| *f != "-") {
        match read_config(pid_dir, file) {
            Ok(text) => match config_backlog(&text) {
                Some(Ok(value)) => {
                    return TcpBacklog {
                        value,
                        source: BacklogSource::ConfigFile,
                        note,
                    };
                }
                Some(Err(e)) => note = Some(e),
                None => {}
            },
            Err(e) => note = Some(e),
        }
    }
    TcpBacklog {
        value: DEFAULT_TCP_BACKLOG,
        source: BacklogSource::Default,
        note,
    }
}

fn read_config(pid_dir: &Path, file: &str) -> Result<String, String> {
    let path: PathBuf = if let Some(abs) = file.strip_prefix('/') {
        pid_dir.join("root").join(abs)
    } else {
        // Relative to where it was started; Redis may have changed directory since (`dir`).
        pid_dir.join("cwd").join(file)
    };
    // A config file is small; a bound keeps a FIFO or a huge file from stalling the scan.
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(1 << 20).read_to_string(&mut text))
        .map_err(|e| format!("config file {file}: {e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Cmdline {
        let mut raw = args.join("\0").into_bytes();
        raw.push(0);
        Cmdline::parse(&raw)
    }

    #[test]
    fn names_by_comm_or_argv0_and_the_process_title() {
        let names = vec!["redis-server".to_string(), "valkey-server".to_string()];
        let t = Cmdline::parse(b"redis-server 127.0.0.1:6379\0\0\0\0\0\0");
        assert!(t.retitled);
        assert_eq!(t.program(), "redis-server");
        assert!(matches(&names, "redis-server", &t));
        let full = cmd(&["/usr/local/bin/valkey-server", "/etc/valkey.conf"]);
        assert!(!full.retitled);
        assert_eq!(full.program(), "valkey-server");
        assert!(matches(&names, "something", &full));
        assert!(matches(&names, "valkey-server", &cmd(&[])));
        assert!(!matches(&names, "redis-cli", &cmd(&["redis-cli", "ping"])));
        assert!(!matches(
            &names,
            "bash",
            &cmd(&["bash", "-c", "redis-server"])
        ));
        // A name longer than comm's 15 bytes matches its first 15.
        let long = vec!["my-redis-server-fork".to_string()];
        assert!(matches(&long, "my-redis-server", &cmd(&["x"])));
    }

    #[test]
    fn tcp_backlog_from_the_command_line_the_config_file_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path();
        std::fs::create_dir_all(pid.join("root/etc/redis")).unwrap();
        std::fs::write(
            pid.join("root/etc/redis/redis.conf"),
            "# tcp-backlog 1\nport 6379\ntcp-backlog 1024\n",
        )
        .unwrap();
        let b = tcp_backlog(
            &cmd(&["redis-server", "--port", "1", "--tcp-backlog", "300"]),
            pid,
        );
        assert_eq!((b.value, b.source), (300, BacklogSource::Cmdline));
        let b = tcp_backlog(&cmd(&["redis-server", "/etc/redis/redis.conf"]), pid);
        assert_eq!((b.value, b.source), (1024, BacklogSource::ConfigFile));
        // The command line comes after the file, as in Redis.
        let b = tcp_backlog(
            &cmd(&[
                "redis-server",
                "/etc/redis/redis.conf",
                "--tcp-backlog",
                "64",
            ]),
            pid,
        );
        assert_eq!((b.value, b.source), (64, BacklogSource::Cmdline));
        let b = tcp_backlog(&cmd(&["redis-server", "--port", "1"]), pid);
        assert_eq!(
            (b.value, b.source, b.note),
            (511, BacklogSource::Default, None)
        );
        let b = tcp_backlog(&cmd(&["redis-server", "/nowhere.conf"]), pid);
        assert_eq!((b.value, b.source), (511, BacklogSource::Default));
        assert!(b.note.is_some_and(|n| n.contains("/nowhere.conf")));
        let b = tcp_backlog(&cmd(&["redis-server", "--tcp-backlog", "lots"]), pid);
        assert_eq!((b.value, b.source), (511, BacklogSource::Default));
        assert!(b.note.is_some_and(|n| n.contains("lots")));
        let b = tcp_backlog(&Cmdline::parse(b"redis-server *:6379\0\0"), pid);
        assert_eq!((b.value, b.source), (511, BacklogSource::AssumedDefault));
    }

    #[test]
    fn config_text() {
        assert_eq!(config_backlog("tcp-backlog 2048\n"), Some(Ok(2048)));
        assert_eq!(config_backlog("TCP-BACKLOG \"128\"\n"), Some(Ok(128)));
        assert_eq!(
            config_backlog("tcp-backlog 1\ntcp-backlog 2\n"),
            Some(Ok(2))
        );
        assert_eq!(config_backlog("# tcp-backlog 1\nport 1\n"), None);
        assert!(matches!(config_backlog("tcp-backlog x"), Some(Err(_))));
    }
}
