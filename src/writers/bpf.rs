//! Loading the writer watch's BPF programs (`bpf/writers.bpf.c`, committed compiled as
//! `bpf/writers.bpf.o`) with aya, filling their maps, and decoding their events.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSysctl};
use aya::{Ebpf, EbpfLoader};

use super::Unavailable;

/// The compiled object (x86_64; built by `bpf/build.sh`, which says how).
#[cfg(target_arch = "x86_64")]
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/writers.bpf.o");

const NAME_LEN: usize = 64;
const VALUE_LEN: usize = 32;
const COMM_LEN: usize = 16;
/// `sizeof(struct event)` in `writers.bpf.c`.
pub const EVENT_SIZE: usize = 144;
/// `sizeof(struct rule)`.
pub const RULE_SIZE: usize = 24;

/// Byte offsets of the C structs' members, as this decoder and encoder use them; checked
/// against the committed object's BTF by `tests/writers.rs`.
pub mod layout {
    pub const RULE: [(&str, usize); 5] = [
        ("knob", 0),
        ("netns", 4),
        ("lock", 8),
        ("op", 12),
        ("value", 16),
    ];
    pub const EVENT: [(&str, usize); 15] = [
        ("knob", KNOB),
        ("source", SOURCE),
        ("refused", REFUSED),
        ("pid", PID),
        ("tid", TID),
        ("ppid", PPID),
        ("uid", UID),
        ("netns", NETNS),
        ("cgroup_id", CGROUP_ID),
        ("old_len", OLD_LEN),
        ("new_len", NEW_LEN),
        ("comm", COMM),
        ("pcomm", PCOMM),
        ("old", OLD),
        ("new", NEW),
    ];
    pub(super) const KNOB: usize = 0;
    pub(super) const SOURCE: usize = 4;
    pub(super) const REFUSED: usize = 8;
    pub(super) const PID: usize = 12;
    pub(super) const TID: usize = 16;
    pub(super) const PPID: usize = 20;
    pub(super) const UID: usize = 24;
    pub(super) const NETNS: usize = 28;
    pub(super) const CGROUP_ID: usize = 32;
    pub(super) const OLD_LEN: usize = 40;
    pub(super) const NEW_LEN: usize = 44;
    pub(super) const COMM: usize = 48;
    pub(super) const PCOMM: usize = 64;
    pub(super) const OLD: usize = 80;
    pub(super) const NEW: usize = 112;
}

/// How the kernel judges a written value in lock mode (`enum op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// Never refused.
    None = 0,
    Eq = 1,
    Ge = 2,
    Le = 3,
}

/// `struct rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub knob: u32,
    /// The host's network namespace inode for `net/*` knobs; 0: any namespace.
    pub netns: u32,
    pub lock: u32,
    pub op: u32,
    pub value: i64,
}

impl Rule {
    /// `struct rule` in native byte order, at the offsets of [`layout::RULE`].
    pub fn to_bytes(self) -> [u8; RULE_SIZE] {
        let mut b = [0u8; RULE_SIZE];
        let at = |name: &str| {
            layout::RULE
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, o)| *o)
        };
        for (name, v) in [
            ("knob", self.knob),
            ("netns", self.netns),
            ("lock", self.lock),
            ("op", self.op),
        ] {
            b[at(name)..at(name) + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b[at("value")..at("value") + 8].copy_from_slice(&self.value.to_ne_bytes());
        b
    }
}

/// `struct event`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawWrite {
    pub knob: u32,
    pub refused: bool,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub netns: u32,
    pub cgroup_id: u64,
    pub comm: String,
    pub parent_comm: String,
    /// The value before the write (sysctl writes only).
    pub old: Option<String>,
    pub new: String,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn text(b: &[u8], len: Option<usize>) -> String {
    let b = match len {
        Some(n) => &b[..n.min(b.len())],
        None => b,
    };
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim().to_string()
}

impl RawWrite {
    /// Decodes one ring-buffer record; `None` if it is not an event of this object.
    pub fn decode(b: &[u8]) -> Option<RawWrite> {
        if b.len() < EVENT_SIZE {
            return None;
        }
        use layout::*;
        if u32_at(b, SOURCE) != 1 {
            return None; // `source`: 1, a sysctl write, is all the program reports
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[CGROUP_ID..CGROUP_ID + 8]);
        let old_len = u32_at(b, OLD_LEN) as usize;
        let new_len = u32_at(b, NEW_LEN) as usize;
        Some(RawWrite {
            knob: u32_at(b, KNOB),
            refused: u32_at(b, REFUSED) != 0,
            pid: u32_at(b, PID),
            tid: u32_at(b, TID),
            ppid: u32_at(b, PPID),
            uid: u32_at(b, UID),
            netns: u32_at(b, NETNS),
            cgroup_id: u64::from_ne_bytes(id),
            comm: text(&b[COMM..COMM + COMM_LEN], None),
            parent_comm: text(&b[PCOMM..PCOMM + COMM_LEN], None),
            old: Some(text(&b[OLD..OLD + VALUE_LEN], Some(old_len))),
            new: text(&b[NEW..NEW + VALUE_LEN], Some(new_len)),
        })
    }
}

/// What the programs watch.
#[derive(Debug, Default)]
pub struct Watchlist {
    /// sysctl name as the kernel gives it (`vm/overcommit_memory`) → rule.
    pub sysctls: Vec<(String, Rule)>,
}

/// The loaded, attached programs: they detach when this is dropped (or the process ends).
pub struct Loaded {
    ebpf: Ebpf,
    pub ring: RingBuf<MapData>,
    lost: Array<MapData, u64>,
    /// The sysctl program's id, to find its link in `/proc/self/fdinfo`.
    prog_id: u32,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loaded")
    }
}

impl Loaded {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    /// Events the kernel side dropped because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.lost.get(&0, 0).unwrap_or(0)
    }

    /// Adds (or replaces) rules: the `net.*` sysctls once host networking is proven, the lock
    /// bit turned off and on by the break-glass file.
    pub fn add_rules(&mut self, rules: &[(String, Rule)]) -> Result<(), Unavailable> {
        let map = self
            .ebpf
            .map_mut("sysctl_rules")
            .ok_or_else(|| missing("sysctl_rules map"))?;
        let mut map: BpfHashMap<_, [u8; NAME_LEN], [u8; RULE_SIZE]> =
            BpfHashMap::try_from(map).map_err(|e| unavailable("sysctl_rules", e))?;
        insert_rules(&mut map, rules)
    }

    /// The program's cgroup link is still attached: this process holds a link of the program
    /// whose `cgroup_id` is not 0 (`bpftool link detach` leaves the link with no cgroup).
    pub fn attached(&self) -> bool {
        let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
            return true; // cannot tell: not reported as detached
        };
        let prog = format!("prog_id:\t{}", self.prog_id);
        dir.flatten().any(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|info| {
                info.lines().any(|l| l == "link_type:\tcgroup")
                    && info.lines().any(|l| l == prog)
                    && info
                        .lines()
                        .find_map(|l| l.strip_prefix("cgroup_id:\t"))
                        .is_some_and(|id| id.trim() != "0")
            })
        })
    }
}

fn insert_rules<M: std::borrow::BorrowMut<MapData>>(
    map: &mut BpfHashMap<M, [u8; NAME_LEN], [u8; RULE_SIZE]>,
    rules: &[(String, Rule)],
) -> Result<(), Unavailable> {
    for (name, rule) in rules {
        let mut key = [0u8; NAME_LEN];
        let b = name.as_bytes();
        if b.len() >= NAME_LEN {
            continue; // the program skips names it cannot read whole
        }
        key[..b.len()].copy_from_slice(b);
        map.insert(key, rule.to_bytes(), 0)
            .map_err(|e| unavailable("sysctl_rules", e))?;
    }
    Ok(())
}

fn kind_of(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Some("permission"),
        _ => None,
    }
}

/// An aya error as an [`Unavailable`] reason: `permission` where the kernel said EPERM/EACCES.
fn unavailable(what: &str, e: impl std::error::Error + 'static) -> Unavailable {
    let mut reason = "load_failed";
    let mut src: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(k) = kind_of(io)
        {
            reason = k;
        }
        src = s.source();
    }
    let mut message = format!("{what}: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        message.push_str(&format!(": {s}"));
        src = s.source();
    }
    Unavailable { reason, message }
}

/// The object lacks a map or program this loader needs (a build of another source).
fn missing(what: &str) -> Unavailable {
    Unavailable {
        reason: "load_failed",
        message: format!("the BPF object has no {what}"),
    }
}

/// Loads the object, fills the maps and attaches: the sysctl program to `cgroup_root` (the
/// cgroup v2 root).
pub fn load(object: &[u8], cgroup_root: &Path, list: &Watchlist) -> Result<Loaded, Unavailable> {
    let pidns = std::fs::metadata("/proc/self/ns/pid").map_err(|e| Unavailable {
        reason: "load_failed",
        message: format!("/proc/self/ns/pid: {e}"),
    })?;
    let (ino, tgid) = (pidns.ino(), std::process::id());
    let mut ebpf = EbpfLoader::new()
        .override_global("self_pidns_ino", &ino, true)
        .override_global("self_tgid", &tgid, true)
        .load(object)
        .map_err(|e| unavailable("loading the BPF object", e))?;
    {
        let map = ebpf
            .map_mut("sysctl_rules")
            .ok_or_else(|| missing("sysctl_rules map"))?;
        let mut rules: BpfHashMap<_, [u8; NAME_LEN], [u8; RULE_SIZE]> =
            BpfHashMap::try_from(map).map_err(|e| unavailable("sysctl_rules", e))?;
        insert_rules(&mut rules, &list.sysctls)?;
    }
    let cgroup = File::open(cgroup_root).map_err(|e| Unavailable {
        reason: "no_cgroup2",
        message: format!("{}: {e}", cgroup_root.display()),
    })?;
    let prog_id = {
        let prog: &mut CgroupSysctl = ebpf
            .program_mut("sysctl_write")
            .ok_or_else(|| missing("sysctl_write program"))?
            .try_into()
            .map_err(|e| unavailable("sysctl_write", e))?;
        prog.load()
            .map_err(|e| unavailable("loading sysctl_write", e))?;
        // A link (kernel ≥ 5.7) always coexists with other programs on the cgroup; it takes no flags.
        prog.attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(|e| unavailable("attaching sysctl_write to the cgroup v2 root", e))?;
        prog.info()
            .map_err(|e| unavailable("sysctl_write", e))?
            .id()
    };
    let ring = RingBuf::try_from(
        ebpf.take_map("events")
            .ok_or_else(|| missing("events map"))?,
    )
    .map_err(|e| unavailable("events", e))?;
    let lost = Array::try_from(ebpf.take_map("lost").ok_or_else(|| missing("lost map"))?)
        .map_err(|e| unavailable("lost", e))?;
    Ok(Loaded {
        ebpf,
        ring,
        lost,
        prog_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Vec<u8> {
        let mut b = vec![0u8; EVENT_SIZE];
        let put =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put(&mut b, 0, 2);
        put(&mut b, 4, 1);
        put(&mut b, 8, 1);
        put(&mut b, 12, 4242);
        put(&mut b, 16, 4243);
        put(&mut b, 20, 4200);
        put(&mut b, 24, 1000);
        put(&mut b, 28, 4026531840);
        b[32..40].copy_from_slice(&77u64.to_ne_bytes());
        put(&mut b, 40, 2);
        put(&mut b, 44, 2);
        b[48..55].copy_from_slice(b"sysctl\0");
        b[64..68].copy_from_slice(b"bash");
        b[80..82].copy_from_slice(b"1\n");
        b[112..114].copy_from_slice(b"0\n");
        b
    }

    #[test]
    fn an_event_record_decodes_field_by_field() {
        let w = RawWrite::decode(&record()).unwrap();
        assert_eq!(
            w,
            RawWrite {
                knob: 2,
                refused: true,
                pid: 4242,
                tid: 4243,
                ppid: 4200,
                uid: 1000,
                netns: 4026531840,
                cgroup_id: 77,
                comm: "sysctl".into(),
                parent_comm: "bash".into(),
                old: Some("1".into()),
                new: "0".into(),
            }
        );
    }

    #[test]
    fn short_or_foreign_records_are_refused() {
        assert_eq!(RawWrite::decode(&record()[..EVENT_SIZE - 1]), None);
        let mut b = record();
        b[4] = 9;
        assert_eq!(RawWrite::decode(&b), None);
    }

    #[test]
    fn a_value_longer_than_its_length_is_cut_at_the_length() {
        let mut b = record();
        b[112..118].copy_from_slice(b"always");
        b[44..48].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(RawWrite::decode(&b).unwrap().new, "alw");
    }
}
