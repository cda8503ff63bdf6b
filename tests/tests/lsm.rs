//! The BPF LSM layer, where the kernel runs BPF LSM programs (the VM tier boots kernels with
//! `lsm=...,bpf`; on hosts that refuse them this test skips and says why): every file kind
//! outside `writable` fails with EPERM for an agent the daemon did not start, nothing is killed,
//! and the files are unchanged — including a refused O_CREAT, which leaves nothing behind.
use std::{fs, os::unix::fs::PermissionsExt, process::Command};

use agent_monitor_e2e::*;

#[test]
fn every_file_kind_is_refused_with_eperm_before_it_happens() {
    if !can_run_root_tests("every_file_kind_is_refused_with_eperm_before_it_happens") {
        return;
    }
    let t = TempDir::new("lsm");
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let o = t.path().display().to_string();
    fs::write(t.join("victim.txt"), "original\n").unwrap();
    fs::set_permissions(t.join("victim.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    let policy = format!(
        "[[agent]]\nname = \"lsm\"\naction = \"deny\"\n[agent.match]\ncomm = [\"am-lsm\"]\n[agent.files]\nwritable = [\"{}\"]\n",
        work.display()
    );
    let d = Daemon::start(&policy);
    if d.metric("agent_monitor_layer_up", &[("layer", "bpf_lsm")]) != Some(1.0) {
        let why = d.log_text().lines().find(|l| l.contains("bpf_lsm:")).unwrap_or("").to_string();
        eprintln!("SKIPPED: BPF LSM is not active on this kernel ({why}); `cargo xtask test --vm` runs this test");
        return;
    }
    let agent = copy_binary(t.path(), "/bin/bash", "am-lsm");
    let cases = [
        ("file.write", format!("echo x >> {o}/victim.txt")),
        ("file.write", format!("echo x > {o}/created.txt")),
        ("file.delete", format!("rm {o}/victim.txt")),
        ("file.rename", format!("mv {o}/victim.txt {}/moved.txt", work.display())),
        ("file.link", format!("ln {o}/victim.txt {}/hard", work.display())),
        ("file.mkdir", format!("mkdir {o}/newdir")),
        ("file.chmod", format!("chmod 600 {o}/victim.txt")),
    ];
    for (kind, script) in &cases {
        let out = Command::new(&agent).arg("-c").arg(script).current_dir(&work).output().unwrap();
        assert!(!killed_by_sigkill(&out.status), "`{script}` was killed: deny must refuse, not kill");
        assert!(!out.status.success(), "`{script}` succeeded outside writable");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Operation not permitted"), "`{script}`: expected EPERM, got {err}");
        let e = d.wait_event(kind, |e| f(e, "kind") == *kind && f(e, "layer") == "bpf_lsm");
        assert_eq!((f(&e, "verdict"), f(&e, "action")), ("violation", "denied"));
    }
    assert_eq!(fs::read_to_string(t.join("victim.txt")).unwrap(), "original\n");
    assert_eq!(fs::metadata(t.join("victim.txt")).unwrap().permissions().mode() & 0o777, 0o644);
    assert!(!t.join("created.txt").exists(), "a refused O_CREAT left a file behind");
    assert!(!t.join("newdir").exists() && !work.join("moved.txt").exists() && !work.join("hard").exists());
    // Inside writable, all of it works.
    let st = run(Command::new(&agent)
        .arg("-c")
        .arg("echo x > a && mkdir d && mv a d/b && ln d/b c && chmod 600 c && rm c")
        .current_dir(&work));
    assert!(st.success(), "work inside writable failed under the LSM layer: {st}");
    // Files no path names are no file writes: a pidfd (pidfs), a pipe, a memfd.
    let py = copy_binary(&work, &python3(), "am-lsm");
    let st = run(Command::new(&py).arg("-c").arg(
        "import os; os.pidfd_open(os.getpid()); r, w = os.pipe(); os.write(w, b'x'); os.write(os.memfd_create('m'), b'x')",
    ));
    assert!(st.success(), "a pidfd, pipe or memfd was treated as a file write: {st}");
}
