//! Which device nodes a container may use: Docker's default set (runc's `AllowedDevices`), enforced
//! by the cgroup, so a node made with `mknod` (CAP_MKNOD is in the default capabilities, as in
//! Docker) or shipped in a pulled layer cannot be opened unless it is one of these.
//!
//! - cgroup v1 (`RBUILD_CGROUP=v1`, or no cgroup2 mounted): the `devices` controller, `a` written
//!   to `devices.deny`, then one [`Rule::v1_line`] per rule to `devices.allow`.
//! - cgroup v2 (preferred): a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the container's cgroup
//!   (`BPF_F_ALLOW_MULTI`, so every program of the ancestors still applies), generated here as raw
//!   eBPF instructions the way runc's `devicefilter` does: the access type, major and minor are
//!   compared against each rule in turn; the first match allows, the end denies.

use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A device type of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Char,
    Block,
}

/// Access bits, with the kernel's `BPF_DEVCG_ACC_*` values.
pub(crate) const MKNOD: u32 = 1;
pub(crate) const READ: u32 = 2;
pub(crate) const WRITE: u32 = 4;
const RWM: u32 = READ | WRITE | MKNOD;

/// One allow rule: `None` is the wildcard `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

const fn rule(kind: Kind, major: Option<u32>, minor: Option<u32>, access: u32) -> Rule {
    Rule {
        kind,
        major,
        minor,
        access,
    }
}

/// Docker's defaults: any node may be CREATED (`m`), only these may be opened: null 1:3, zero 1:5,
/// full 1:7, random 1:8, urandom 1:9, tty 5:0, console 5:1, ptmx 5:2 and the pty slaves 136:*.
/// (`/dev/net/tun` 10:200, which runc once allowed, is not in Docker's default set.)
pub(crate) const DEFAULT_RULES: [Rule; 11] = [
    rule(Kind::Char, None, None, MKNOD),
    rule(Kind::Block, None, None, MKNOD),
    rule(Kind::Char, Some(1), Some(3), RWM),
    rule(Kind::Char, Some(1), Some(5), RWM),
    rule(Kind::Char, Some(1), Some(7), RWM),
    rule(Kind::Char, Some(1), Some(8), RWM),
    rule(Kind::Char, Some(1), Some(9), RWM),
    rule(Kind::Char, Some(5), Some(0), RWM),
    rule(Kind::Char, Some(5), Some(1), RWM),
    rule(Kind::Char, Some(5), Some(2), RWM),
    rule(Kind::Char, Some(136), None, RWM),
];

impl Rule {
    /// The rule as the v1 controller writes it (`c 1:3 rwm`, `b *:* m`).
    pub(crate) fn v1_line(&self) -> String {
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        let mut acc = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(c);
            }
        }
        let k = match self.kind {
            Kind::Char => 'c',
            Kind::Block => 'b',
        };
        format!("{k} {}:{} {acc}", n(self.major), n(self.minor))
    }
}

/// One eBPF instruction (`struct bpf_insn`: dst in the low nibble of `regs`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes (class | op | source).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR

/// The device program for `rules`. Input (`struct bpf_cgroup_dev_ctx` in r1): `access_type` (type
/// in the low 16 bits, access bits above), `major`, `minor`. Returns 1 to allow, 0 to deny.
pub(crate) fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff), // r2 = type
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16), // r3 = access
        insn(LDX_MEM_W, 4, 1, 4, 0),    // r4 = major
        insn(LDX_MEM_W, 5, 1, 8, 0),    // r5 = minor
    ];
    for r in rules {
        // Each test jumps past the end of this rule's block when it does not match; the offsets
        // are filled in once the block's length is known.
        let mut block = Vec::new();
        let t = match r.kind {
            Kind::Char => DEV_CHAR,
            Kind::Block => DEV_BLOCK,
        };
        block.push(insn(JMP_JNE_K, 2, 0, 0, t));
        if r.access & RWM != RWM {
            // The requested access must be within the rule's: (access & allowed) == access.
            block.push(insn(ALU64_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU64_AND_K, 1, 0, 0, r.access as i32));
            block.push(insn(JMP_JNE_X, 1, 3, 0, 0));
        }
        if let Some(m) = r.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = r.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, m as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K || ins.code == JMP_JNE_X {
                ins.off = (len - 1 - i) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is the repr(C) prefix of `union bpf_attr` the command reads; the kernel
    // zero-extends a shorter attr.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) }
}

/// Loads the device program for `rules` (the verifier's log in the error when it refuses it).
pub(crate) fn load(rules: &[Rule]) -> Result<OwnedFd> {
    let prog = program(rules);
    let mut name = [0u8; 16];
    name[..14].copy_from_slice(b"rbuild_devices");
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    for log_level in [0, 1] {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size: if log_level > 0 { log.len() as u32 } else { 0 },
            log_buf: if log_level > 0 {
                log.as_mut_ptr() as u64
            } else {
                0
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: 0,
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr);
        if fd >= 0 {
            // SAFETY: BPF_PROG_LOAD returned a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let err = std::io::Error::last_os_error();
        if log_level == 1 || err.raw_os_error() != Some(libc::EACCES) {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            return Err(Error::Sys {
                op: format!(
                    "load the cgroup v2 device program (bpf BPF_PROG_LOAD){}",
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!(" [verifier: {text}]")
                    }
                ),
                source: err,
            });
        }
        // EACCES is the verifier refusing it: load again to get its log.
    }
    unreachable!("the loop returns on its second pass")
}

/// Restricts the v2 cgroup directory `dir` to `rules` with a device program.
pub(crate) fn attach_v2(dir: &Path, rules: &[Rule]) -> Result<()> {
    let prog = load(rules)?;
    let cg = std::fs::File::open(dir).map_err(|e| Error::io("open cgroup", dir, e))?;
    let mut attr = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    if bpf(BPF_PROG_ATTACH, &mut attr) != 0 {
        return Err(Error::last_os(
            "attach the device program (bpf BPF_PROG_ATTACH) to cgroup",
            dir,
        ));
    }
    // The cgroup holds the program now; it goes with the cgroup's removal.
    Ok(())
}

/// Restricts the v1 devices cgroup directory `dir` to `rules`.
pub(crate) fn write_v1(dir: &Path, rules: &[Rule]) -> Result<()> {
    let write = |file: &str, line: &str| {
        let p = dir.join(file);
        std::fs::write(&p, line).map_err(|e| Error::Cgroup {
            path: p,
            msg: format!("write {line:?}: {e}"),
        })
    };
    write("devices.deny", "a")?;
    for r in rules {
        write("devices.allow", &r.v1_line())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel would, for one access.
    fn eval(prog: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | typ, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = ctx[(i.off / 4) as usize] as u64,
                ALU64_AND_K => r[dst] &= i.imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JMP_JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JMP_JNE_K | JMP_JNE_X => {}
                JMP_EXIT => return r[0],
                c => panic!("unknown opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn v1_lines() {
        let lines: Vec<String> = DEFAULT_RULES.iter().map(Rule::v1_line).collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[1], "b *:* m");
        assert_eq!(lines[2], "c 1:3 rwm");
        assert_eq!(lines[10], "c 136:* rwm");
    }

    #[test]
    fn program_semantics() {
        let p = program(&DEFAULT_RULES);
        let (c, b) = (DEV_CHAR as u32, DEV_BLOCK as u32);
        assert_eq!(eval(&p, c, READ | WRITE, 1, 3), 1, "null");
        assert_eq!(eval(&p, c, READ, 1, 9), 1, "urandom");
        assert_eq!(eval(&p, c, READ | WRITE, 136, 4), 1, "pty slave");
        assert_eq!(eval(&p, c, READ | WRITE, 5, 2), 1, "ptmx");
        assert_eq!(eval(&p, c, READ, 1, 1), 0, "mem");
        assert_eq!(eval(&p, c, READ | WRITE, 10, 229), 0, "fuse");
        assert_eq!(eval(&p, c, READ | WRITE, 10, 200), 0, "tun");
        assert_eq!(eval(&p, b, READ, 8, 0), 0, "sda");
        assert_eq!(eval(&p, b, MKNOD, 8, 0), 1, "mknod of a block device");
        assert_eq!(eval(&p, c, MKNOD, 10, 229), 1, "mknod of a char device");
        assert_eq!(eval(&p, b, MKNOD | READ, 8, 0), 0, "mknod+read");
        assert_eq!(eval(&p, b, READ, 1, 3), 0, "block 1:3 is not null");
    }

    #[test]
    fn program_passes_the_verifier() {
        if !nix::unistd::geteuid().is_root() {
            return; // loading needs CAP_BPF / CAP_SYS_ADMIN
        }
        load(&DEFAULT_RULES).expect("the kernel accepts the device program");
    }
}
