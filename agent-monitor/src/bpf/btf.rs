//! Just enough of a BTF reader to find struct member offsets in the running kernel
//! (`/sys/kernel/btf/vmlinux`), descending into anonymous structs and unions.
//! Format: Documentation/bpf/btf.rst.
use std::{collections::HashMap, path::Path};

use agent_monitor_common::Offsets;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF has no member {1} in struct {0}")]
    NoMember(String, String),
    #[error("kernel struct layout not supported: the programs expect {0}")]
    Layout(&'static str),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// The kernel's BTF, read in place: the blob itself plus an index of where each type starts.
///
/// `vmlinux` has ~130k types; giving each of them (and each struct member) its own `String`
/// and `Vec` made this ~20 MiB of small allocations for the 34 offsets wanted (and ~20 ms), the
/// daemon's start-up peak then and heap left fragmented after it. Names are compared in place.
pub struct Btf {
    data: Vec<u8>,
    /// The type and string sections, as ranges of `data`.
    types: std::ops::Range<usize>,
    strs: std::ops::Range<usize>,
    /// Where each type's record starts in the type section; index = type id (0, void, has none).
    at: Vec<u32>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap())).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io { path: path.display().to_string(), source })?;
        Self::from_vec(data)
    }

    #[cfg(test)]
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        Self::from_vec(data.to_vec())
    }

    fn from_vec(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (only little-endian BTF is supported)"));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strs = hdr_len + str_off..hdr_len + str_off + str_len;
        if data.get(types.clone()).is_none() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        if data.get(strs.clone()).is_none() {
            return Err(BtfError::Malformed("string section out of bounds"));
        }
        let mut btf = Btf { at: vec![0], structs: HashMap::new(), data, types, strs };
        let tys = &btf.data[btf.types.clone()];
        let mut p = 0;
        while p + 12 <= tys.len() {
            let name_off = u32_at(tys, p)?;
            let info = u32_at(tys, p + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let id = btf.at.len() as u32;
            btf.at.push(p as u32);
            p += 12;
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => p += 4,
                KIND_ARRAY => p += 12,
                KIND_STRUCT | KIND_UNION => {
                    if p + vlen * 12 > tys.len() {
                        return Err(BtfError::Malformed("truncated"));
                    }
                    p += vlen * 12;
                }
                KIND_ENUM => p += vlen * 8,
                KIND_FUNC_PROTO => p += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => p += vlen * 12,
                _ => {}
            }
            let name = btf.name(name_off);
            if kind == KIND_STRUCT && !name.is_empty() && vlen > 0 {
                let name = String::from_utf8_lossy(name).into_owned();
                btf.structs.entry(name).or_insert(id);
            }
        }
        Ok(btf)
    }

    /// The NUL-terminated string at `off` in the string section.
    fn name(&self, off: u32) -> &[u8] {
        let strs = &self.data[self.strs.clone()];
        let s = &strs[(off as usize).min(strs.len())..];
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    }

    /// The start of type `id`'s record in the type section, and its `info` word.
    fn record(&self, id: u32) -> Option<(&[u8], usize, u32)> {
        let tys = &self.data[self.types.clone()];
        let p = *self.at.get(id as usize).filter(|_| id != 0)? as usize;
        Some((tys, p, u32_at(tys, p + 4).ok()?))
    }

    /// Kind of type `id`, and its size or the type it refers to.
    fn kind(&self, id: u32) -> Option<(u32, u32)> {
        let (tys, p, info) = self.record(id)?;
        Some(((info >> 24) & 0x1f, u32_at(tys, p + 8).ok()?))
    }

    /// Members (name, type, bit offset) of type `id` if it is a struct or union.
    fn members(&self, id: u32) -> impl Iterator<Item = (&[u8], u32, u32)> + '_ {
        let (tys, p, info) = self.record(id).unwrap_or_default();
        let kflag = info >> 31 == 1;
        let n = if matches!((info >> 24) & 0x1f, KIND_STRUCT | KIND_UNION) { (info & 0xffff) as usize } else { 0 };
        let word = move |off: usize| u32_at(tys, off).unwrap_or_default();
        (0..n).map(move |i| {
            let m = p + 12 + i * 12;
            let off = word(m + 8);
            (self.name(word(m)), word(m + 4), if kflag { off & 0x00ff_ffff } else { off })
        })
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.kind(id) {
                Some((KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG, ty)) => id = ty,
                _ => break,
            }
        }
        id
    }

    fn find_in(&self, id: u32, member: &str) -> Option<u32> {
        self.kind(id)?;
        if let Some((_, _, bit_offset)) = self.members(id).find(|(name, _, _)| *name == member.as_bytes()) {
            return Some(bit_offset / 8);
        }
        for (_, ty, bit_offset) in self.members(id).filter(|(name, _, _)| name.is_empty()) {
            let inner = self.resolve(ty);
            if matches!(self.kind(inner).map(|k| k.0), Some(KIND_STRUCT | KIND_UNION)) {
                if let Some(off) = self.find_in(inner, member) {
                    return Some(bit_offset / 8 + off);
                }
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous members.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self.structs.get(name).ok_or_else(|| BtfError::NoStruct(name.into()))?;
        self.find_in(id, member).ok_or_else(|| BtfError::NoMember(name.into(), member.into()))
    }

    /// Every offset the programs need.
    pub fn offsets(&self) -> Result<Offsets, BtfError> {
        let o = |s: &str, m: &str| self.offset(s, m);
        let offsets = Offsets {
            task_tgid: o("task_struct", "tgid")?,
            task_start_time: o("task_struct", "start_time")?,
            task_real_parent: o("task_struct", "real_parent")?,
            task_mm: o("task_struct", "mm")?,
            task_fs: o("task_struct", "fs")?,
            task_files: o("task_struct", "files")?,
            mm_exe_file: o("mm_struct", "exe_file")?,
            mm_arg_start: o("mm_struct", "arg_start")?,
            task_ti_status: o("task_struct", "thread_info")? + o("thread_info", "status")?,
            fs_pwd: o("fs_struct", "pwd")?,
            fs_root: o("fs_struct", "root")?,
            files_fdt: o("files_struct", "fdt")?,
            fdt_max_fds: o("fdtable", "max_fds")?,
            fdt_fd: o("fdtable", "fd")?,
            file_f_path: o("file", "f_path")?,
            file_f_inode: o("file", "f_inode")?,
            file_f_mode: o("file", "f_mode")?,
            path_mnt: o("path", "mnt")?,
            path_dentry: o("path", "dentry")?,
            dentry_d_parent: o("dentry", "d_parent")?,
            dentry_d_name: o("dentry", "d_name")?,
            qstr_len: o("qstr", "len")?,
            qstr_name: o("qstr", "name")?,
            inode_i_mode: o("inode", "i_mode")?,
            task_exit_code: o("task_struct", "exit_code")?,
            task_group_leader: o("task_struct", "group_leader")?,
            vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
            mount_mnt: o("mount", "mnt")?,
            mount_mnt_parent: o("mount", "mnt_parent")?,
            mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
            file_private_data: o("file", "private_data")?,
            pid_numbers: o("pid", "numbers")?,
            inode_i_private: o("inode", "i_private")?,
            socket_type: o("socket", "type")?,
            msghdr_msg_name: o("msghdr", "msg_name")?,
            inode_i_sb: o("inode", "i_sb")?,
            inode_i_nlink: o("inode", "i_nlink")?,
            sb_s_flags: o("super_block", "s_flags")?,
            task_signal: o("task_struct", "signal")?,
            signal_live: o("signal_struct", "live")?,
            mount_mnt_id: o("mount", "mnt_id")?,
            mount_mnt_ns: o("mount", "mnt_ns")?,
            socket_sk: o("socket", "sk")?,
            sock_family: o("sock", "__sk_common")? + o("sock_common", "skc_family")?,
            valid: 1,
        };
        let arg_end = self.offset("mm_struct", "arg_end")?;
        // The programs read `d_parent` + `d_name` and `struct path` each in one read.
        let o = &offsets;
        let layout = [
            ("dentry.d_name right after dentry.d_parent", o.dentry_d_name == o.dentry_d_parent + 8),
            ("qstr { u32 hash; u32 len; const char *name; }", o.qstr_len == 4 && o.qstr_name == 8),
            ("path { mnt; dentry; }", o.path_mnt == 0 && o.path_dentry == 8),
            ("fdtable { max_fds; fd; }", o.fdt_max_fds == 0 && o.fdt_fd == 8),
            ("mm_struct.arg_end right after arg_start", arg_end == o.mm_arg_start + 8),
        ];
        if let Some((what, _)) = layout.iter().find(|(_, ok)| !ok) {
            return Err(BtfError::Layout(what));
        }
        Ok(offsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a tiny BTF blob: struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name; }
    fn blob() -> Vec<u8> {
        let strs = b"\0qstr\0hash\0len\0hash_len\0name\0u32\0".to_vec();
        let s = |n: &str| -> u32 {
            let w = format!("{n}\0");
            (strs.windows(w.len()).position(|x| x == w.as_bytes()).unwrap()) as u32
        };
        let mut t = Vec::new();
        let mut ty = |name: u32, info: u32, size: u32, extra: &[u32]| {
            for v in [name, info, size].iter().chain(extra) {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        // 1: int u32
        ty(s("u32"), KIND_INT << 24, 4, &[32]);
        // 2: anon struct { hash: u32 @0, len: u32 @32 }
        ty(0, KIND_STRUCT << 24 | 2, 8, &[s("hash"), 1, 0, s("len"), 1, 32]);
        // 3: anon union { <anon struct 2> @0, hash_len: u32 @0 }
        ty(0, KIND_UNION << 24 | 2, 8, &[0, 2, 0, s("hash_len"), 1, 0]);
        // 4: struct qstr { <anon union 3> @0, name: u32 @64 }
        ty(s("qstr"), KIND_STRUCT << 24 | 2, 16, &[0, 3, 0, s("name"), 1, 64]);
        let mut out = Vec::new();
        out.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        out.extend_from_slice(&24u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strs.len() as u32).to_le_bytes());
        out.extend_from_slice(&t);
        out.extend_from_slice(&strs);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("qstr", "len").unwrap(), 4);
        assert_eq!(btf.offset("qstr", "hash").unwrap(), 0);
        assert_eq!(btf.offset("qstr", "name").unwrap(), 8);
        assert!(matches!(btf.offset("qstr", "nope"), Err(BtfError::NoMember(..))));
        assert!(matches!(btf.offset("dentry", "d_name"), Err(BtfError::NoStruct(..))));
    }

    #[test]
    fn running_kernel_offsets() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: {} missing (kernel without CONFIG_DEBUG_INFO_BTF)", path.display());
            return;
        }
        let o = Btf::from_file(path).unwrap().offsets().unwrap();
        // Layouts that have not moved in a decade.
        assert_eq!(o.qstr_len, 4);
        assert_eq!(o.qstr_name, 8);
        assert_eq!(o.path_mnt, 0);
        assert_eq!(o.path_dentry, 8);
        assert_eq!(o.dentry_d_name, o.dentry_d_parent + 8);
        assert_eq!((o.fdt_max_fds, o.fdt_fd), (0, 8));
        assert_eq!(o.valid, 1);
    }
}
