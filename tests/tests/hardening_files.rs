//! Issue 20, class 3: a file is judged by what it is, not by the name the caller sees it under.
//! Bind mounts (in the host mount namespace, in a private one, in a user namespace), chroot,
//! pivot_root, /proc/PID/root, open_by_handle_at, a symlink inside `writable` that points out
//! (red team R1), metadata writes no hook sees (xattrs, ACLs, times, inode flags: R8), and a block
//! device node made inside `writable` (R7) must not change a decision.
//!
//! Each test checks what a user would: the file outside `writable` is unchanged (content, mode,
//! times, xattrs, flags), the agent died of SIGKILL or got EPERM, and a violation names the
//! agent and the rule. Where a topology syscall (mount, unshare, pivot_root, chroot) is itself
//! refused, the event's kind is the one the daemon gives it; where the write is judged by the
//! object, it is `file.write` and names the real file.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use agent_monitor_e2e::{attack::*, *};

struct Setup {
    t: TempDir,
    work: PathBuf,
    /// A directory outside `writable`, holding `file`.
    outdir: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let t = TempDir::new(tag);
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let outdir = t.join("outside");
    fs::create_dir(&outdir).unwrap();
    fs::write(outdir.join("file"), "original\n").unwrap();
    Setup { t, work, outdir }
}

fn policy(name: &str, comm: &str, work: &Path) -> String {
    agent_policy(name, &[comm], "kill", &[work], &[], "")
}

/// The attack was stopped and an enforced violation of the agent (after its first `seen`
/// violations) says so; if that violation is a file kind, it names the real file. `file` is
/// unchanged, unless the event says the tracepoint layer could only kill after that very
/// operation on the real file had taken effect (its documented limit).
fn assert_object_protected(
    d: &Daemon,
    agent: &str,
    file: &Path,
    before: Option<&FileState>,
    res: &(std::process::ExitStatus, String, String),
    what: &str,
    seen: usize,
) {
    let (st, out, err) = res;
    assert_stopped(what, st, out, err);
    let e = wait_for(&format!("a violation of {agent} ({what})"), 10, || violations(d, agent).into_iter().nth(seen));
    let action = f(&e, "action");
    assert!(action == "killed" || action == "denied", "{what}: {e}");
    assert!(!f(&e, "rule").is_empty(), "{what}: the event names no rule: {e}");
    let real = f(&e, "target") == file.display().to_string();
    if f(&e, "kind").starts_with("file.") && f(&e, "rule") == "files.writable" {
        // The name seen in another mount namespace is not the host's: the event may show it
        // only if it says the path was not judged by that name.
        let foreign = f(&e, "detail").contains("not judged by its name");
        assert!(real || foreign, "{what}: judged by another name than {}: {e}", file.display());
    }
    let now = fs::symlink_metadata(file).is_ok().then(|| FileState::of(file));
    if !(real && f(&e, "detail").contains("completed before the kill") && !d.lsm()) {
        assert_eq!(now.as_ref(), before, "{what}: {} changed: {e}", file.display());
    }
}

#[test]
fn a_bind_mount_in_the_host_namespace_does_not_make_outside_writable() {
    if !can_run_root_tests("a_bind_mount_in_the_host_namespace_does_not_make_outside_writable") {
        return;
    }
    if !have("mount") || !have("umount") {
        eprintln!("SKIPPED: mount and umount (util-linux) are needed");
        return;
    }
    let s = setup("bind-host");
    let file = s.outdir.join("file");
    let (r1, r2) = (s.work.join("r"), s.work.join("r2"));
    let _guards = (UnmountOnDrop(r1.clone()), UnmountOnDrop(r2.clone()));
    let d =
        Daemon::start(&format!("{}{}", policy("binder", "am-bind", &s.work), policy("binder2", "am-bind2", &s.work)));
    let before = FileState::of(&file);
    // mount(2), as `mount --bind` does it.
    let agent = agent_copy(s.t.path(), "/bin/bash", "am-bind");
    let script = format!(
        "mkdir {r} && mount --bind {o} {r} && echo pwned >> {r}/file",
        r = r1.display(),
        o = s.outdir.display()
    );
    let res = output(Command::new(&agent).arg("-c").arg(&script));
    assert_object_protected(
        &d,
        "binder",
        &file,
        Some(&before),
        &res,
        "mount --bind outside into writable, then append",
        0,
    );
    // The new mount API: open_tree(OPEN_TREE_CLONE) then move_mount into writable.
    let py = py_agent(s.t.path(), "am-bind2");
    let script = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
src, dst = sys.argv[1].encode(), sys.argv[2]
os.mkdir(dst)
fd = libc.syscall(428, -100, src, 1 | 0o2000000)                 # open_tree(OPEN_TREE_CLONE|CLOEXEC)
if fd < 0: print("open_tree", os.strerror(ctypes.get_errno())); sys.exit(13 if ctypes.get_errno() == 1 else 2)
r = libc.syscall(429, fd, b"", -100, dst.encode(), 4)           # move_mount(MOVE_MOUNT_F_EMPTY_PATH)
if r != 0: print("move_mount", os.strerror(ctypes.get_errno())); sys.exit(13 if ctypes.get_errno() == 1 else 2)
with open(os.path.join(dst, "file"), "a") as f: f.write("pwned\n")
print("written")
"#;
    let res = output(Command::new(&py).args(["-c", script]).arg(&s.outdir).arg(&r2));
    assert_object_protected(
        &d,
        "binder2",
        &file,
        Some(&before),
        &res,
        "open_tree + move_mount into writable, then append",
        0,
    );
}

#[test]
fn a_bind_mount_in_a_private_mount_namespace_does_not_make_outside_writable() {
    if !can_run_root_tests("a_bind_mount_in_a_private_mount_namespace_does_not_make_outside_writable") {
        return;
    }
    if !have("unshare") || !have("mount") {
        eprintln!("SKIPPED: unshare and mount (util-linux) are needed");
        return;
    }
    let s = setup("bind-ns");
    let file = s.outdir.join("file");
    let d = Daemon::start(&policy("ns-binder", "am-nsbind", &s.work));
    let before = FileState::of(&file);
    let agent = agent_copy(s.t.path(), "/bin/bash", "am-nsbind");
    let script = format!(
        "unshare -m sh -c 'mkdir -p {r} && mount --bind {o} {r} && echo pwned >> {r}/file'",
        r = s.work.join("r").display(),
        o = s.outdir.display()
    );
    let res = output(Command::new(&agent).arg("-c").arg(&script));
    assert_object_protected(
        &d,
        "ns-binder",
        &file,
        Some(&before),
        &res,
        "unshare -m, bind outside into writable, append",
        0,
    );
}

#[test]
fn a_bind_mount_in_a_user_namespace_does_not_make_a_users_own_files_writable() {
    if !can_run_root_tests("a_bind_mount_in_a_user_namespace_does_not_make_a_users_own_files_writable") {
        return;
    }
    let s = setup("bind-userns");
    // uid 65534's own files, outside its `writable` (its home, its repositories).
    let home = s.t.join("home");
    fs::create_dir(&home).unwrap();
    let rc = home.join(".bashrc");
    fs::write(&rc, "original\n").unwrap();
    for p in [&home, &rc] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    if !have("setpriv") || !have("unshare") {
        eprintln!("SKIPPED: setpriv and unshare (util-linux) are needed to act as uid 65534");
        return;
    }
    fs::set_permissions(&s.work, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(s.t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let probe = output(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "unshare",
        "-Urm",
        "true",
    ]));
    if !probe.0.success() {
        eprintln!("SKIPPED: an unprivileged user namespace cannot be made here: {}", probe.2);
        return;
    }
    let d = Daemon::start(&policy("userns", "am-userns", &s.work));
    let before = FileState::of(&rc);
    let py = py_agent(s.t.path(), "am-userns");
    fs::set_permissions(py.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    // What `unshare -Urm` does, without writing uid_map (a write to /proc the daemon would see):
    // the creator of a user namespace holds every capability in it, enough to bind mount.
    let code = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
home, mnt = sys.argv[1].encode(), sys.argv[2]
def ok(r, what):
    if r != 0:
        e = ctypes.get_errno(); print(what, os.strerror(e), flush=True); sys.exit(13 if e in (1, 13) else 2)
os.mkdir(mnt)
ok(libc.unshare(0x10000000 | 0x00020000), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
ok(libc.mount(None, b"/", None, 0x4000 | 0x40000, None), "mount --make-rprivate /")
ok(libc.mount(home, mnt.encode(), None, 0x1000, None), "mount --bind")
with open(os.path.join(mnt, ".bashrc"), "a") as f: f.write("pwned\n")
print("written")
"#;
    let res = output(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&py)
            .args(["-c", code])
            .arg(&home)
            .arg(s.work.join("h")),
    );
    assert_object_protected(
        &d,
        "userns",
        &rc,
        Some(&before),
        &res,
        "uid 65534: a user and mount namespace, its home bound into writable, append",
        0,
    );
}

#[test]
fn chroot_does_not_change_what_a_path_names() {
    if !can_run_root_tests("chroot_does_not_change_what_a_path_names") {
        return;
    }
    let s = setup("chroot");
    let jail = s.t.join("jail");
    let mirrored = jail.join(s.work.strip_prefix("/").unwrap());
    fs::create_dir_all(&mirrored).unwrap();
    let d = Daemon::start(&policy("chroot", "am-chroot", &s.work));
    let py = py_agent(s.t.path(), "am-chroot");
    let code = format!("import os, sys\nos.chroot(sys.argv.pop(1)); os.chdir('/')\n{PY_PATH_OP}");
    let ops = ["append", "unlink", "chmod", "truncate", "rename"];
    each_variant(&ops, |op| {
        let real = mirrored.join(format!("victim-{op}"));
        fs::write(&real, "original\n").unwrap();
        let before = FileState::of(&real);
        let seen = violations(&d, "chroot").len();
        let as_seen = s.work.join(format!("victim-{op}"));
        let mut cmd = Command::new(&py);
        cmd.args(["-c", &code]).arg(&jail).arg(op).arg(&as_seen);
        if *op == "rename" {
            cmd.arg(s.work.join("moved"));
        }
        let (st, out, err) = output(&mut cmd);
        assert_stopped(&format!("chroot, then {op} {}", as_seen.display()), &st, &out, &err);
        let e = next_violation(
            &d,
            "chroot",
            &["file.write", "file.delete", "file.chmod", "file.rename", "file.mkdir", "sys.mount"],
            seen,
        );
        if f(&e, "kind") == "sys.mount" {
            // The chroot itself refused (or killed before anything ran inside it).
            assert_enforced(&e, "syscalls.allow");
            assert_eq!(f(&e, "target"), "chroot", "{e}");
        } else {
            assert_enforced(&e, "files.writable");
        }
        if d.lsm() || !f(&e, "detail").contains("completed before the kill") {
            let now = fs::symlink_metadata(&real).is_ok().then(|| FileState::of(&real));
            assert_eq!(now.as_ref(), Some(&before), "{} changed: {e}", real.display());
        }
        if f(&e, "target") != real.display().to_string() {
            // A topology syscall refused (the chroot itself) is as good; a write judged by
            // the jail's name is not.
            assert!(!f(&e, "target").starts_with(&s.work.display().to_string()), "judged by the name in the jail: {e}");
        }
    });
}

/// pivot_root in a private mount namespace makes a mirror of `writable` the new `/`: every
/// path, the kernel's own walk up to the namespace root included, now says `writable`.
#[test]
fn pivot_root_does_not_change_what_a_path_names() {
    if !can_run_root_tests("pivot_root_does_not_change_what_a_path_names") {
        return;
    }
    let s = setup("pivot");
    let new_root = s.t.join("newroot");
    let mirrored = new_root.join(s.work.strip_prefix("/").unwrap());
    fs::create_dir_all(&mirrored).unwrap();
    let d = Daemon::start(&policy("pivot", "am-pivot", &s.work));
    let py = py_agent(s.t.path(), "am-pivot");
    let code = format!("{PY_PIVOT_ROOT}\n{PY_PATH_OP}");
    let ops = ["append", "unlink", "chmod", "truncate"];
    each_variant(&ops, |op| {
        let real = mirrored.join(format!("victim-{op}"));
        fs::write(&real, "original\n").unwrap();
        let before = FileState::of(&real);
        let seen = violations(&d, "pivot").len();
        let res = output(
            Command::new(&py).args(["-c", &code]).arg(&new_root).arg(op).arg(s.work.join(format!("victim-{op}"))),
        );
        assert_object_protected(&d, "pivot", &real, Some(&before), &res, &format!("pivot_root, then {op}"), seen);
    });
}

/// Another process's root, through /proc/PID/root: a non-agent helper lives in a mount
/// namespace whose root is a mirror of `writable`; the agent opens a file through it.
#[test]
fn proc_pid_root_of_another_namespace_does_not_change_what_a_path_names() {
    if !can_run_root_tests("proc_pid_root_of_another_namespace_does_not_change_what_a_path_names") {
        return;
    }
    let s = setup("procroot");
    let new_root = s.t.join("newroot");
    let mirrored = new_root.join(s.work.strip_prefix("/").unwrap());
    fs::create_dir_all(&mirrored).unwrap();
    let real = mirrored.join("victim");
    fs::write(&real, "original\n").unwrap();
    // The helper is not an agent (plain python3): it pivots into `newroot` and waits.
    let ready = s.t.join("helper-ready");
    let helper_code = format!("{PY_PIVOT_ROOT}\nimport time\nprint('ready', flush=True)\ntime.sleep(120)\n");
    let mut helper = Bg(Command::new(python3())
        .args(["-c", &helper_code])
        .arg(&new_root)
        .stdout(fs::File::create(&ready).unwrap())
        .spawn()
        .unwrap());
    wait_file(&ready, 10);
    let hp = helper.0.id();
    let d = Daemon::start(&policy("procroot", "am-procroot", &s.work));
    let py = py_agent(s.t.path(), "am-procroot");
    let through = PathBuf::from(format!("/proc/{hp}/root{}", s.work.join("victim").display()));
    let before = FileState::of(&real);
    let res = output(Command::new(&py).args(["-c", PY_PATH_OP, "append"]).arg(&through));
    assert_object_protected(&d, "procroot", &real, Some(&before), &res, "append through /proc/PID/root", 0);
    let _ = helper.0.kill();
}

/// open_by_handle_at: a writable descriptor from a file handle, with no path in the open.
#[test]
fn open_by_handle_at_is_judged_like_an_open() {
    if !can_run_root_tests("open_by_handle_at_is_judged_like_an_open") {
        return;
    }
    let s = setup("handle");
    let Some(h) = cc(s.t.path(), "handle_open.c", "am-handle") else { return };
    let file = s.outdir.join("file");
    let d = Daemon::start(&policy("handle", "am-handle", &s.work));
    // Through the root's mount, and through a directory inside `writable`.
    let mounts = [PathBuf::from("/"), s.work.clone()];
    each_variant(&mounts, |m| {
        let before = FileState::of(&file);
        let seen = violations(&d, "handle").len();
        let (st, out, err) = output(Command::new(&h).arg(m).arg(&file));
        if st.code() == Some(2) && err.contains("name_to_handle_at") {
            eprintln!("SKIPPED variant {}: this file system gives no handles: {err}", m.display());
            return;
        }
        assert_stopped(&format!("open_by_handle_at through {}", m.display()), &st, &out, &err);
        assert_eq!(FileState::of(&file), before, "the file changed");
        let e = next_violation(&d, "handle", &["file.write"], seen);
        assert_enforced(&e, "files.writable");
        assert_eq!(f(&e, "target"), file.display().to_string());
    });
}

/// The agent plants a symlink inside `writable` that points outside, then renames, deletes,
/// re-permissions, truncates or links through it (red team R1).
#[test]
fn a_symlink_inside_writable_does_not_redirect_path_operations() {
    if !can_run_root_tests("a_symlink_inside_writable_does_not_redirect_path_operations") {
        return;
    }
    let s = setup("symlink-ops");
    let d = Daemon::start(&policy("linker", "am-linker", &s.work));
    let py = py_agent(s.t.path(), "am-linker");
    let code = format!("import os, sys\nos.symlink(sys.argv.pop(1), sys.argv.pop(1))\n{PY_PATH_OP}");
    for n in ["new-rename", "new-link"] {
        fs::write(s.work.join(n), "replaced\n").unwrap();
    }
    // (operation, real object outside writable, its kind)
    let ops: Vec<(&str, &str)> = vec![
        ("rename", "file.rename"),
        ("unlink", "file.delete"),
        ("chmod", "file.chmod"),
        ("chown", "file.chmod"),
        ("truncate", "file.write"),
        ("link", "file.link"),
        ("mkdir", "file.mkdir"),
    ];
    each_variant(&ops, |(op, kind)| {
        let real = s.outdir.join(format!("v-{op}"));
        if *op != "mkdir" && *op != "rename" && *op != "link" {
            fs::write(&real, "original\n").unwrap();
        }
        let before = fs::symlink_metadata(&real).is_ok().then(|| FileState::of(&real));
        let link = s.work.join(format!("o-{op}"));
        let through = link.join(format!("v-{op}"));
        let seen = violations(&d, "linker").len();
        let mut cmd = Command::new(&py);
        cmd.args(["-c", &code]).arg(&s.outdir).arg(&link).arg(op);
        match *op {
            // The first path inside writable, the second through the link.
            "rename" | "link" => cmd.arg(s.work.join(format!("new-{op}"))).arg(&through),
            _ => cmd.arg(&through),
        };
        let (st, out, err) = output(&mut cmd);
        assert_stopped(&format!("symlink out, then {op} through it"), &st, &out, &err);
        // Either the link to outside was itself refused (a file.link naming the link), or the
        // operation was judged on the real object.
        let e = next_violation(&d, "linker", &[kind, "file.link"], seen);
        assert_enforced(&e, "files.writable");
        let link_refused = f(&e, "kind") == "file.link" && f(&e, "target") == link.display().to_string();
        if !link_refused {
            assert_eq!(f(&e, "target"), real.display().to_string(), "judged by the name, not the object: {e}");
        }
        if link_refused || d.lsm() || !f(&e, "detail").contains("completed before the kill") {
            let now = fs::symlink_metadata(&real).is_ok().then(|| FileState::of(&real));
            assert_eq!(now, before, "{} changed: {e}", real.display());
        }
    });
}

/// Metadata writes that no hook saw (red team R8): extended attributes, a POSIX ACL, times,
/// inode flags (chattr), on a file outside `writable`. chown is the control (hooked today).
#[test]
fn metadata_changes_outside_writable_are_judged() {
    if !can_run_root_tests("metadata_changes_outside_writable_are_judged") {
        return;
    }
    let s = setup("metadata");
    let d = Daemon::start(&policy("meta", "am-meta", &s.work));
    let py = py_agent(s.t.path(), "am-meta");
    let ops = ["setxattr", "removexattr", "setacl", "utime", "chattr", "chown"];
    each_variant(&ops, |op| {
        let target = s.outdir.join(format!("m-{op}"));
        fs::write(&target, "original\n").unwrap();
        let c = std::ffi::CString::new(target.display().to_string()).unwrap();
        let r =
            unsafe { libc::setxattr(c.as_ptr(), c"user.keep".as_ptr(), b"1".as_ptr() as *const libc::c_void, 1, 0) };
        if r != 0 {
            // tmpfs takes user xattrs from Linux 6.6 on: before, there is none to change.
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "setxattr on {}: {e}", target.display());
            if op.contains("xattr") {
                println!("note: {op} not tried: {} takes no user xattrs ({e})", s.outdir.display());
                return;
            }
        }
        let before = FileState::of(&target);
        let res = output(Command::new(&py).args(["-c", PY_PATH_OP, op]).arg(&target));
        if res.0.code() == Some(2) || res.2.contains("Operation not supported") {
            panic!("{op} cannot run here: {}", res.2);
        }
        assert_path_op_stopped(
            &d,
            "meta",
            &["file.chmod", "file.metadata", "file.write"],
            &target,
            Some(&before),
            &res,
        );
    });
}

/// A block device node inside `writable` is a door to the whole disk (red team R7): made by the
/// agent with mknod, or found there; the disk (a loop device over a file outside `writable`)
/// must not change.
#[test]
fn a_block_device_node_inside_writable_is_judged_by_what_it_is() {
    if !can_run_root_tests("a_block_device_node_inside_writable_is_judged_by_what_it_is") {
        return;
    }
    if !have("losetup") || !have("mknod") {
        eprintln!("SKIPPED: losetup and mknod are needed to make a disk over a file");
        return;
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        eprintln!("SKIPPED: no loop devices here (/dev/loop-control is missing)");
        return;
    }
    let s = setup("blockdev");
    let image = s.t.join("disk.img");
    fs::write(&image, vec![b'o'; 1 << 20]).unwrap();
    let Some(lo) = LoopDev::attach(&image) else { return };
    let (major, minor) = lo.numbers();
    let d = Daemon::start(&policy("blockdev", "am-blockdev", &s.work));
    let py = py_agent(s.t.path(), "am-blockdev");
    let code = r#"
import os, stat, sys
node, major, minor, make = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "mknod"
try:
    if make:
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
    fd = os.open(node, os.O_WRONLY)
    os.pwrite(fd, b"pwned" * 100, 8192)
    os.fsync(fd)
except PermissionError as e:
    print(e); sys.exit(13)
print("written")
"#;
    // Made by a process that is not an agent (an administrator, an earlier container).
    let found = s.work.join("found");
    assert!(run(Command::new("mknod").arg(&found).arg("b").arg(major.to_string()).arg(minor.to_string())).success());
    let variants = [("mknod", s.work.join("made")), ("open", found)];
    each_variant(&variants, |(how, node)| {
        let before = fs::read(&image).unwrap();
        let seen = violations(&d, "blockdev").len();
        let (st, out, err) = output(
            Command::new(&py).args(["-c", code]).arg(node).arg(major.to_string()).arg(minor.to_string()).arg(how),
        );
        assert_stopped(&format!("{how} a block device in writable, write to it"), &st, &out, &err);
        let _ = Command::new("blockdev").arg("--flushbufs").arg(&lo.dev).status();
        assert!(fs::read(&image).unwrap() == before, "the disk image outside writable changed");
        let e = next_violation(&d, "blockdev", &["file.write", "file.mkdir", "file.device"], seen);
        let action = f(&e, "action");
        assert!(action == "killed" || action == "denied", "{e}");
    });
}

/// Python (ctypes): a raw `clone(CLONE_FILES)`, a child that shares the descriptor table and
/// spins writing descriptor 100, and a parent that opens the file outside `writable` and puts it
/// at descriptor 100. A kill lands on one process: the child's write would go through before
/// the kill of the opener reached it.
const PY_SHARED_FDS: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
target = sys.argv[1]
pid = libc.syscall(56, 0x400 | 17, 0, 0, 0, 0)   # clone(CLONE_FILES | SIGCHLD)
if pid == 0:
    for _ in range(2000000):
        try:
            os.write(100, b"pwned\n"); os._exit(0)
        except OSError:
            pass
    os._exit(1)
print("cloned", pid, flush=True)
time.sleep(0.05)
fd = os.open(target, os.O_WRONLY | os.O_APPEND)
os.dup2(fd, 100)
time.sleep(1)
"#;

/// Red team round 3, #5: a process that shares the agent's descriptor table (CLONE_FILES
/// without CLONE_THREAD) is refused at the clone: the kill of an opener reaches one thread
/// group, and a sibling sharing its descriptors would write in between. The file outside
/// `writable` is unchanged.
#[test]
fn a_process_sharing_the_descriptor_table_is_refused() {
    if !can_run_root_tests("a_process_sharing_the_descriptor_table_is_refused") {
        return;
    }
    let s = setup("clone-files");
    let file = s.outdir.join("file");
    let d = Daemon::start(&policy("clonefiles", "am-clonefiles", &s.work));
    let py = py_agent(s.t.path(), "am-clonefiles");
    let before = FileState::of(&file);
    let (st, out, err) = output(Command::new(&py).args(["-c", PY_SHARED_FDS]).arg(&file));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(FileState::of(&file), before, "the file outside writable changed: {out}{err}");
    assert!(killed_by_sigkill(&st), "the agent was not killed: {st}\n{out}{err}");
    assert!(!out.contains("cloned"), "the clone went through: {out}{err}");
    let e = violation(&d, "clonefiles", &["sys.namespace"]);
    assert!(f(&e, "detail").contains("descriptor table"), "{e}");
    assert_eq!(f(&e, "action"), "killed", "{e}");
}

/// Red team round 3, #12: a hard link inside `writable` to a file outside it (left by an
/// earlier run that was killed after the link took effect, or a package manager's store that
/// links into the work directory). A file is judged by what it is: writing the inode under its
/// inside name writes the outside file, so a file with more than one name is not writable.
/// A file with one name inside `writable` still is.
#[test]
fn a_hard_link_inside_writable_does_not_make_its_other_name_writable() {
    if !can_run_root_tests("a_hard_link_inside_writable_does_not_make_its_other_name_writable") {
        return;
    }
    let s = setup("hardlink");
    let file = s.outdir.join("file");
    let link = s.work.join("link");
    fs::hard_link(&file, &link).unwrap();
    let d = Daemon::start(&policy("hardlink", "am-hardlink", &s.work));
    let agent = copy_binary(s.t.path(), "/bin/bash", "am-hardlink");
    let own = s.work.join("own");
    let (st, out, err) = output(Command::new(&agent).args(["-c", &format!("echo mine > {}", own.display())]));
    assert!(st.success(), "a file of one name inside writable was refused: {st}\n{out}{err}");
    let before = FileState::of(&file);
    let (st, out, err) = output(Command::new(&agent).args(["-c", &format!("echo pwned >> {}", link.display())]));
    assert_stopped("a write through a hard link", &st, &out, &err);
    assert_eq!(FileState::of(&file), before, "the file outside writable changed through its link");
    let e = violation(&d, "hardlink", &["file.write"]);
    assert!(f(&e, "detail").contains("hard links"), "{e}");
}
