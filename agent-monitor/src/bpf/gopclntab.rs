//! Go's function table (`.gopclntab`): where a function starts, by name, in a Go executable
//! whose symbol table was stripped (`go build -ldflags=-s -w`, `strip`). The runtime needs the
//! table for stack traces and garbage collection, so no Go program can do without it.
//!
//! Hand-written: the crates that read it (`gimli` does not; `gosym` ports are unmaintained and
//! pre-1.18) were not made for this, and the part needed is small. Layout (Go 1.18+,
//! `runtime/symtab.go`, `pcHeader`): magic (0xfffffff0 for 1.18-1.19, 0xfffffff1 for 1.20+),
//! two pad bytes, the minimum instruction size, the pointer size, then pointer-sized `nfunc`,
//! `nfiles`, `textStart`, and the offsets (from the header) of the function-name table, the
//! compilation-unit table, the file table, the pc tables and `pclntab`. `pclntab` starts with
//! `nfunc + 1` pairs of u32 (`entryoff` from `textStart`, `funcoff` from `pclntab`); each
//! function record starts with its `entryoff` (u32) and `nameOff` (i32, into the name table,
//! a NUL-terminated string).
//!
//! Older tables (Go 1.16-1.17) are not read: the register ABI the Go probe reads starts at 1.17
//! on amd64 and 1.18 on arm64, and `tls_libs::go_register_abi` asks for 1.18.

/// The entry (virtual address) of each of `names` in a Go ELF's `.gopclntab`, in order; None
/// where the table has no such function or cannot be read. Every offset is bounds-checked and
/// a function's record must name the entry the index gives it.
pub fn func_entries(obj: &object::File, names: &[&str]) -> Vec<Option<u64>> {
    use object::{Object as _, ObjectSection as _};
    let mut out = vec![None; names.len()];
    let Some(tab) = obj.section_by_name(".gopclntab").and_then(|s| s.data().ok()) else {
        return out;
    };
    let _ = read(tab, obj.is_little_endian(), names, &mut out);
    out
}

fn read(tab: &[u8], little: bool, names: &[&str], out: &mut [Option<u64>]) -> Option<()> {
    let u32_at = |off: usize| -> Option<u32> {
        let b: [u8; 4] = tab.get(off..off.checked_add(4)?)?.try_into().ok()?;
        Some(if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    let magic = u32_at(0)?;
    if magic != 0xffff_fff0 && magic != 0xffff_fff1 {
        return None;
    }
    let ptr = *tab.get(7)? as usize;
    if ptr != 4 && ptr != 8 {
        return None;
    }
    let word = |i: usize| -> Option<u64> {
        let off = 8 + i * ptr;
        let b = tab.get(off..off + ptr)?;
        Some(match (ptr, little) {
            (8, true) => u64::from_le_bytes(b.try_into().ok()?),
            (8, false) => u64::from_be_bytes(b.try_into().ok()?),
            (_, true) => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
            (_, false) => u64::from(u32::from_be_bytes(b.try_into().ok()?)),
        })
    };
    let nfunc = usize::try_from(word(0)?).ok()?;
    let text_start = word(2)?;
    let funcnames = usize::try_from(word(3)?).ok()?;
    let pclntab = usize::try_from(word(7)?).ok()?;
    // The index must fit in the table (a corrupt nfunc would otherwise run far).
    if nfunc.checked_mul(8)?.checked_add(pclntab)? > tab.len() {
        return None;
    }
    let mut left = names.len();
    for i in 0..nfunc {
        let entryoff = u32_at(pclntab + i * 8)?;
        let funcoff = u32_at(pclntab + i * 8 + 4)? as usize;
        let rec = pclntab.checked_add(funcoff)?;
        if u32_at(rec)? != entryoff {
            return None; // not the layout this reader knows
        }
        let name_off = u32_at(rec + 4)? as i32;
        let Ok(name_off) = usize::try_from(name_off) else { continue };
        let start = funcnames.checked_add(name_off)?;
        let Some(rest) = tab.get(start..) else { continue };
        let name = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
        for (k, want) in names.iter().enumerate() {
            if out[k].is_none() && name == want.as_bytes() {
                out[k] = Some(text_start.checked_add(u64::from(entryoff))?);
                left -= 1;
            }
        }
        if left == 0 {
            break;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    /// A table as the Go 1.20 linker lays it out (64-bit, little-endian): two functions.
    fn table() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend(0xffff_fff1u32.to_le_bytes());
        t.extend([0, 0, 1, 8]);
        let names = b"main.main\0crypto/tls.(*Conn).Write\0";
        let header = 8 + 8 * 8;
        let funcnames = header as u64;
        let pclntab = (header + names.len()) as u64;
        for w in [2u64, 0, 0x40_1000, funcnames, 0, 0, 0, pclntab] {
            t.extend(w.to_le_bytes());
        }
        t.extend(names);
        // Index: 2 functions + the end, then the records (entryoff, nameOff, padding).
        let recs = 3 * 8;
        for (entry, rec) in [(0x100u32, recs), (0x2340, recs + 16), (0x3000, 0)] {
            t.extend(entry.to_le_bytes());
            t.extend((rec as u32).to_le_bytes());
        }
        for (entry, name) in [(0x100u32, 0i32), (0x2340, 10)] {
            t.extend(entry.to_le_bytes());
            t.extend(name.to_le_bytes());
            t.extend([0u8; 8]);
        }
        t
    }

    #[test]
    fn functions_are_found_by_name_from_text_start() {
        let t = table();
        let mut out = vec![None; 3];
        super::read(&t, true, &["crypto/tls.(*Conn).Write", "main.main", "absent"], &mut out).unwrap();
        assert_eq!(out, [Some(0x40_3340), Some(0x40_1100), None]);
    }

    #[test]
    fn a_table_it_does_not_know_gives_nothing() {
        // Go 1.16's magic.
        let mut t = table();
        t[..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        let mut out = vec![None; 1];
        assert!(super::read(&t, true, &["main.main"], &mut out).is_none());
        // A record that does not name the entry its index gives.
        let mut t = table();
        let n = t.len();
        t[n - 32..n - 28].copy_from_slice(&0x999u32.to_le_bytes());
        assert!(super::read(&t, true, &["crypto/tls.(*Conn).Write"], &mut out).is_none());
        assert_eq!(out, [None]);
        // An index longer than the table.
        let mut t = table();
        t[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(super::read(&t, true, &["main.main"], &mut out).is_none());
        // Cut anywhere: never a panic.
        let t = table();
        for cut in 0..t.len() {
            let mut out = vec![None; 2];
            let _ = super::read(&t[..cut], true, &["main.main", "crypto/tls.(*Conn).Write"], &mut out);
        }
    }
}
