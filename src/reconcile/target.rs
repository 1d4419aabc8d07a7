//! A profile resolved into the knobs of this host: each setting's file (per-size THP files
//! discovered), paired with what the profile wants of it.

use crate::kernel::{HostFs, KnobFile, Location};
use crate::profile::{Desired, Knob, Mode, Profile, Setting};

/// One knob of this host, resolved from a profile setting.
#[derive(Debug)]
pub struct Target {
    pub file: KnobFile,
    /// The profile setting it comes from (per-size THP knobs share `thp.per_size`).
    pub setting: String,
    pub desired: Desired,
    pub mode: Mode,
}

impl Target {
    fn new(s: &Setting, file: KnobFile) -> Target {
        Target {
            file,
            setting: s.name.clone(),
            desired: s.desired.clone(),
            mode: s.mode,
        }
    }

    /// The knob's name: the setting name, or `thp.hugepages-<size>kB.enabled` per size.
    pub fn name(&self) -> &str {
        &self.file.name
    }

    pub fn location(&self) -> &Location {
        &self.file.location
    }
}

/// Resolves a profile into the knobs of this host (per-size THP files are discovered).
pub fn resolve(fs: &HostFs, profile: &Profile) -> Vec<Target> {
    let mut out = Vec::new();
    for s in &profile.settings {
        match &s.knob {
            Knob::Sysctl(name) => out.push(Target::new(
                s,
                KnobFile::sysctl(name, s.desired.numeric().is_some()),
            )),
            Knob::ThpEnabled => out.push(Target::new(s, KnobFile::thp(&s.name, "enabled"))),
            Knob::ThpDefrag => out.push(Target::new(s, KnobFile::thp(&s.name, "defrag"))),
            Knob::ThpPerSize => {
                let sizes = fs.thp_sizes();
                if sizes.is_empty() {
                    // No THP, or a kernel before mTHP (6.8): nothing to check. A sys root
                    // without kernel/mm reads as "not found".
                    let mut f = KnobFile::thp(&s.name, "hugepages-*kB/enabled");
                    f.not_applicable = fs.thp_absent() || fs.thp_present();
                    out.push(Target::new(s, f));
                }
                for (kb, dir) in sizes {
                    let name = format!("thp.hugepages-{kb}kB.enabled");
                    out.push(Target::new(
                        s,
                        KnobFile::thp(&name, &format!("{dir}/enabled")),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::testing::{FakeTree, file};

    #[test]
    fn resolves_and_reads_the_default_profile() {
        let tree = FakeTree::untuned();
        let (fs, mut ts) = tree.default_targets();
        let names: Vec<_> = ts.iter().map(|t| t.file.name.clone()).collect();
        assert_eq!(
            names,
            [
                "vm.overcommit_memory",
                "net.core.somaxconn",
                "thp.enabled",
                "thp.defrag",
                "thp.hugepages-64kB.enabled",
                "thp.hugepages-2048kB.enabled"
            ]
        );
        let r = fs
            .read(file(&mut ts, "net.core.somaxconn"))
            .unwrap()
            .unwrap();
        assert_eq!((r.value.as_str(), r.number), ("128", Some(128)));
        let r = fs.read(file(&mut ts, "thp.enabled")).unwrap().unwrap();
        assert_eq!(r.value, "always");
        let r = fs
            .read(file(&mut ts, "thp.hugepages-64kB.enabled"))
            .unwrap()
            .unwrap();
        assert_eq!(r.value, "inherit");
    }

    #[test]
    fn missing_thp_directory_is_not_applicable() {
        let tree = FakeTree::untuned();
        std::fs::remove_dir_all(tree.dir.path().join("sys/kernel/mm/transparent_hugepage"))
            .unwrap();
        let (fs, mut ts) = tree.default_targets();
        let thp: Vec<_> = ts
            .iter_mut()
            .filter(|t| t.file.name.starts_with("thp."))
            .collect();
        assert_eq!(thp.len(), 3);
        for t in thp {
            assert_eq!(fs.read(&mut t.file), Ok(None), "{}", t.file.name);
        }
    }

    #[test]
    fn a_resolved_profiles_paths_stay_below_their_roots() {
        let tree = FakeTree::untuned();
        let fs = tree.fs();
        let p = crate::profile::Profile::from_yaml(
            "sysctls:\n  net/ipv4/conf/eth0.100/rp_filter: {equals: 1}\n",
        )
        .unwrap();
        for t in super::resolve(&fs, &p) {
            assert!(t.location().is_contained(), "{t:?}");
            assert!(fs.path(t.location()).starts_with(tree.dir.path()), "{t:?}");
        }
    }
}
