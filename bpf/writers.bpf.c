// SPDX-License-Identifier: (MIT OR GPL-2.0)
// The writer watch of redis-node-tuner: who writes the knobs of the profile.
//
// sysctl_write (cgroup/sysctl, attached to the cgroup v2 root): every write to /proc/sys by any
//   process. A write to a watched sysctl, in the network namespace the agent enforces for
//   per-namespace (net/*) knobs (given per rule), is reported with its writer before it is applied; in lock
//   mode a write that would move an enforce-mode knob out of the profile is refused (EPERM).
// THP files are sysfs, not sysctls: inotify and fanotify watch them (src/writers/), so nothing
// here runs on unrelated system calls (an earlier raw tracepoint on sys_exit did, and cost
// Redis 5-9 % of its throughput).
// The agent's own writes (its thread group, in its PID namespace) are never reported or
// refused. Built by bpf/build.sh; the object is committed.
//
// Helpers: only those cgroup/sysctl programs had before Linux 6.10, when
// bpf_get_[ns_]current_pid_tgid came to every program type: the sysctl helpers, map and
// ring-buffer helpers, strtol, get_current_uid_gid and get_current_cgroup_id (cgroup base
// protos), and get_current_task with probe_read_kernel(_str) (base protos, CAP_PERFMON). The
// writer's pids and the agent's own are read from the task with CO-RE. Needs: cgroup/sysctl
// links (5.7), ring buffers (5.8), BTF; loads on Debian 12's 6.1 (tests/kernel_matrix.rs).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define NAME_LEN 64
#define VALUE_LEN 32
#define COMM_LEN 16

// Only the fields read here; CO-RE relocates them against the running kernel's BTF.
struct ns_common { unsigned int inum; } __attribute__((preserve_access_index));
struct net { struct ns_common ns; } __attribute__((preserve_access_index));
struct nsproxy { struct net *net_ns; } __attribute__((preserve_access_index));
struct pid_namespace { struct ns_common ns; } __attribute__((preserve_access_index));
// struct upid is { int nr; struct pid_namespace *ns; } in every kernel: 16 bytes.
struct upid { int nr; struct pid_namespace *ns; };
struct pid { unsigned int level; struct upid numbers[1]; } __attribute__((preserve_access_index));
struct task_struct {
	int pid;
	int tgid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct pid *thread_pid;
	struct nsproxy *nsproxy;
	char comm[COMM_LEN];
} __attribute__((preserve_access_index));
#if !defined(__TARGET_ARCH_x86)
#error "the writer watch is built for x86_64 only"
#endif
// Deepest PID namespace nesting (MAX_PID_NS_LEVEL).
#define PID_NS_LEVELS 32

// How a value is judged in lock mode (numeric rules only; the others are never refused).
enum op { OP_NONE = 0, OP_EQ = 1, OP_GE = 2, OP_LE = 3 };

struct rule {
	__u32 knob;      // index of the knob in the agent's list
	__u32 netns;     // net/*: the host's network namespace (inode); 0: any namespace
	__u32 lock;      // refuse writes that would leave the profile
	__u32 op;
	__s64 value;
};

struct event {
	__u32 knob;
	__u32 source;    // 1: a sysctl write (the only source; kept for the layout)
	__u32 refused;
	__u32 pid;       // thread group id, in the initial PID namespace
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 netns;
	__u64 cgroup_id;
	__u32 old_len;
	__u32 new_len;
	char comm[COMM_LEN];   // the thread-group leader's
	char pcomm[COMM_LEN];  // the parent's thread-group leader's
	char old[VALUE_LEN];
	char new[VALUE_LEN];
};

// Puts struct event in the object's BTF (no map or program names it otherwise), where
// tests/writers.rs checks the user-space decoder's offsets against it.
struct event *const volatile event_layout = 0;

const volatile __u64 self_pidns_ino = 0;
const volatile __u32 self_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[NAME_LEN]);
	__type(value, struct rule);
} sysctl_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

// [0]: events lost because the ring buffer was full.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

// The writer is the agent: its thread-group leader's pid, as seen in the pid namespace that
// pid was created in (the deepest), is the agent's tgid in the agent's namespace. What
// bpf_get_ns_current_pid_tgid does, read with CO-RE.
static __always_inline int is_self(struct task_struct *task)
{
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	struct pid *pid = BPF_CORE_READ(leader, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid up = {};

	if (!pid || level >= PID_NS_LEVELS)
		return 0;
	if (bpf_probe_read_kernel(&up, sizeof(up), &pid->numbers[level]))
		return 0;
	return up.nr == (int)self_tgid && BPF_CORE_READ(up.ns, ns.inum) == self_pidns_ino;
}

static __always_inline void count_lost(void)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&lost, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void fill_writer(struct event *e, struct task_struct *task)
{
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	struct task_struct *parent = BPF_CORE_READ(task, real_parent);
	struct task_struct *pleader = BPF_CORE_READ(parent, group_leader);

	e->pid = BPF_CORE_READ(task, tgid);
	e->tid = BPF_CORE_READ(task, pid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), &leader->comm);
	bpf_probe_read_kernel_str(e->pcomm, sizeof(e->pcomm), &pleader->comm);
}

static __always_inline int allowed(const struct rule *r, const char *buf, int len)
{
	long v = 0;
	if (!r->lock || r->op == OP_NONE)
		return 1;
	if (len <= 0)
		return 0; // unreadable or empty: cannot satisfy a numeric rule
	// ((len - 1) & 31) + 1 is len for 1..32, and tells the verifier so.
	if (bpf_strtol(buf, ((len - 1) & (VALUE_LEN - 1)) + 1, 0, &v) < 0)
		return 0; // not a number
	switch (r->op) {
	case OP_EQ: return v == r->value;
	case OP_GE: return v >= r->value;
	case OP_LE: return v <= r->value;
	}
	return 1;
}

SEC("cgroup/sysctl")
int sysctl_write(struct bpf_sysctl *ctx)
{
	char name[NAME_LEN] = {};
	struct rule *r;
	struct event *e;
	struct task_struct *task;
	__u32 netns;
	int refuse;

	if (!ctx->write)
		return 1;
	if (bpf_sysctl_get_name(ctx, name, sizeof(name), 0) < 0)
		return 1; // longer than any watched name
	r = bpf_map_lookup_elem(&sysctl_rules, name);
	if (!r)
		return 1;
	task = (struct task_struct *)bpf_get_current_task();
	if (is_self(task))
		return 1;
	netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	if (r->netns && netns != r->netns)
		return 1; // another network namespace's own copy of the knob

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		char v[VALUE_LEN] = {};
		int n = bpf_sysctl_get_new_value(ctx, v, sizeof(v));
		count_lost();
		return allowed(r, v, n);
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->knob = r->knob;
	e->source = 1;
	fill_writer(e, task);
	int o = bpf_sysctl_get_current_value(ctx, e->old, sizeof(e->old));
	int n = bpf_sysctl_get_new_value(ctx, e->new, sizeof(e->new));
	e->old_len = o < 0 ? 0 : o;
	e->new_len = n < 0 ? 0 : n;
	refuse = !allowed(r, e->new, n);
	e->refused = refuse;
	bpf_ringbuf_submit(e, 0);
	return refuse ? 0 : 1;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
