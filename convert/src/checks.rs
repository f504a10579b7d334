//! The bounded checks a checkpoint passes before candle's reader sees it: every zip entry read
//! once (its CRC checked), and the pickles interpreted opcode by opcode within one allocation
//! budget, as candle's interpreter would, so that a hostile file is refused instead of
//! exhausting memory.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::ENV_MAX_TENSORS;

/// Reads every entry of the zip at `path` once, which checks its CRC (the tensor reader does
/// not: a corrupt checkpoint would convert silently), and runs [`check_pickle`] on the pickles
/// the reader will interpret, all within one budget of `budget` bytes. What is not a zip is left
/// for the reader to report.
pub(crate) fn check_zip(path: &Path, budget: u64) -> std::result::Result<(), String> {
    let file = std::fs::File::open(path).map(std::io::BufReader::new);
    let Some(mut zip) = file.ok().and_then(|f| zip::ZipArchive::new(f).ok()) else {
        return Ok(());
    };
    let mut spent = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("zip entry {i}: {e}"))?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        let mut pickle = vec![];
        let read = if name.ends_with("data.pkl") {
            // One byte over the budget is enough to refuse it.
            let left = budget.saturating_sub(spent);
            (&mut entry)
                .take(left.saturating_add(1))
                .read_to_end(&mut pickle)
                .map(drop)
        } else {
            std::io::copy(&mut entry, &mut std::io::sink()).map(drop)
        };
        read.map_err(|e| format!("`{name}` is corrupt ({e})"))?;
        if name.ends_with("data.pkl") {
            check_pickle(&pickle, &mut spent, budget).map_err(|e| {
                format!("{e} (a pickle bomb?); raise the limit with ${ENV_MAX_TENSORS}")
            })?;
        }
    }
    Ok(())
}

/// What candle's pickle interpreter (`candle_core::pickle::Stack`) holds for one object: the
/// kind, where it changes what an opcode does, and the bytes the object takes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `Object::Mark`, which `t`, `e` and `u` pop back to.
    Mark,
    /// `Object::Dict`, which `s` and `u` add to and `b` merges.
    Dict,
    /// `Object::List`, which `a` and `e` add to.
    List,
    /// The class `collections.OrderedDict` or `collections.defaultdict`, which `R` turns into an
    /// empty dict.
    DictClass,
    /// Anything else.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Obj {
    kind: Kind,
    bytes: u64,
}

/// Bytes counted for each object the interpreter makes: twice the size of its `Object` (for the
/// spare capacity of the vectors holding it), strings counted on top.
pub(crate) const OBJECT_BYTES: u64 = 2 * std::mem::size_of::<candle_core::pickle::Object>() as u64;

/// Walks a pickle exactly as candle's interpreter will (the same opcodes, each popping, pushing
/// and copying what it does there, the same errors), counting what the interpreter would
/// allocate: every byte read, every object made and every deep copy (the interpreter copies the
/// whole object on each memo put and get, so a few hundred bytes can ask for terabytes), and a
/// string's length before its bytes are read. Refuses the pickle once that passes `budget` (with
/// `spent` carried over from earlier pickles), or when a string is longer than the data left.
/// Stops quietly where the interpreter would stop with an error of its own.
pub(crate) fn check_pickle(
    p: &[u8],
    spent: &mut u64,
    budget: u64,
) -> std::result::Result<(), String> {
    fn take<'a>(p: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
        let s = p.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    }
    fn uint(b: &[u8]) -> u64 {
        b.iter().rev().fold(0, |v, &x| v << 8 | x as u64)
    }
    /// candle's `read_to_newline`: up to a newline or the end (never an error), less its last
    /// byte and then a `\r`.
    fn line<'a>(p: &'a [u8], at: &mut usize) -> &'a [u8] {
        let rest = &p[*at..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .map_or(rest.len(), |n| n + 1);
        *at += n;
        let l = &rest[..n.saturating_sub(1)];
        l.strip_suffix(b"\r").unwrap_or(l)
    }
    let mut spend = |n: u64| -> std::result::Result<(), String> {
        *spent = spent.saturating_add(n);
        if *spent > budget {
            return Err(format!(
                "reading its pickle would take more than {} MiB",
                budget >> 20
            ));
        }
        Ok(())
    };
    spend(p.len() as u64)?;
    let new = |kind: Kind, bytes: u64| Obj {
        kind,
        bytes: bytes.saturating_add(OBJECT_BYTES),
    };
    let mut stack: Vec<Obj> = vec![];
    let mut memo: HashMap<u32, Obj> = HashMap::new();
    // `pop` and `pop_to_marker`; `None` where the interpreter fails.
    let pop = |stack: &mut Vec<Obj>| stack.pop();
    let pop_to_mark = |stack: &mut Vec<Obj>| -> Option<u64> {
        let mark = stack.iter().rposition(|o| o.kind == Kind::Mark)?;
        let bytes = stack[mark + 1..]
            .iter()
            .fold(0u64, |a, o| a.saturating_add(o.bytes));
        stack.truncate(mark);
        Some(bytes)
    };
    let mut at = 0;
    while let Some(&[op]) = take(p, &mut at, 1) {
        // The object pushed, if any; `None` from a step where the interpreter fails.
        let pushed: Option<Option<Obj>> = match op {
            0x80 => take(p, &mut at, 1).map(|_| None),
            b'c' => {
                let (module, class) = (line(p, &mut at), line(p, &mut at));
                let kind = match (module, class) {
                    (b"collections", b"OrderedDict" | b"defaultdict") => Kind::DictClass,
                    _ => Kind::Other,
                };
                // Lossy UTF-8: an invalid byte becomes 3.
                let len = 3 * (module.len() + class.len()) as u64;
                spend(len)?;
                Some(Some(new(kind, len)))
            }
            b'K' => take(p, &mut at, 1).map(|_| Some(new(Kind::Other, 0))),
            b'M' => take(p, &mut at, 2).map(|_| Some(new(Kind::Other, 0))),
            b'J' => take(p, &mut at, 4).map(|_| Some(new(Kind::Other, 0))),
            b'G' => take(p, &mut at, 8).map(|_| Some(new(Kind::Other, 0))),
            b'X' => {
                let Some(n) = take(p, &mut at, 4).map(uint) else {
                    return Ok(());
                };
                if n > (p.len() - at) as u64 {
                    return Err(format!(
                        "the pickle holds a string of {n} bytes but only {} bytes follow",
                        p.len() - at
                    ));
                }
                // Allocated before it is read.
                spend(n)?;
                take(p, &mut at, n as usize)
                    .filter(|s| std::str::from_utf8(s).is_ok())
                    .map(|_| Some(new(Kind::Other, n)))
            }
            b'Q' => pop(&mut stack).map(|o| Some(new(Kind::Other, o.bytes))),
            b't' => pop_to_mark(&mut stack).map(|b| Some(new(Kind::Other, b))),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                stack
                    .len()
                    .checked_sub(n)
                    .map(|start| stack.drain(start..).map(|o| o.bytes).sum::<u64>())
                    .map(|b| Some(new(Kind::Other, b)))
            }
            0x88 | 0x89 | b'N' | b')' => Some(Some(new(Kind::Other, 0))),
            b'}' | b'd' => Some(Some(new(Kind::Dict, 0))),
            b']' => Some(Some(new(Kind::List, 0))),
            b'(' => Some(Some(new(Kind::Mark, 0))),
            b'a' | b'e' | b's' | b'u' => {
                let (added, into) = match op {
                    b'a' => (pop(&mut stack).map(|o| o.bytes), Kind::List),
                    b'e' => (pop_to_mark(&mut stack), Kind::List),
                    b's' => (
                        pop(&mut stack)
                            .zip(pop(&mut stack))
                            .map(|(v, k)| v.bytes.saturating_add(k.bytes)),
                        Kind::Dict,
                    ),
                    _ => {
                        // `u` checks for pairs after finding the dict.
                        let mark = stack.iter().rposition(|o| o.kind == Kind::Mark);
                        let pairs = mark.is_some_and(|m| (stack.len() - m - 1).is_multiple_of(2));
                        let added = pop_to_mark(&mut stack);
                        (added.filter(|_| pairs), Kind::Dict)
                    }
                };
                match (added, stack.last_mut()) {
                    (Some(a), Some(last)) if last.kind == into => {
                        last.bytes = last.bytes.saturating_add(a);
                        Some(None)
                    }
                    _ => None,
                }
            }
            b'b' | b'R' | 0x81 => pop(&mut stack).zip(pop(&mut stack)).map(|(args, obj)| {
                Some(match (op, obj.kind, args.kind) {
                    (b'b', Kind::Dict, Kind::Dict) => Obj {
                        kind: Kind::Dict,
                        bytes: obj.bytes.saturating_add(args.bytes),
                    },
                    (b'R', Kind::DictClass, _) => new(Kind::Dict, 0),
                    _ => new(Kind::Other, obj.bytes.saturating_add(args.bytes)),
                })
            }),
            b'.' => return Ok(()),
            b'h' | b'j' | b'q' | b'r' => {
                let width = if matches!(op, b'h' | b'q') { 1 } else { 4 };
                let Some(id) = take(p, &mut at, width).map(|b| uint(b) as u32) else {
                    return Ok(());
                };
                let copy = match op {
                    b'h' | b'j' => memo.get(&id).copied(),
                    _ => stack.last().copied(),
                };
                let Some(copy) = copy else { return Ok(()) };
                spend(copy.bytes)?;
                if matches!(op, b'q' | b'r') {
                    memo.insert(id, copy);
                    Some(None)
                } else {
                    Some(Some(copy))
                }
            }
            0x8a => take(p, &mut at, 1)
                .and_then(|n| take(p, &mut at, n[0] as usize))
                .map(|_| Some(new(Kind::Other, 0))),
            _ => None,
        };
        match pushed {
            None => return Ok(()),
            Some(None) => {}
            Some(Some(obj)) => {
                // A memo get's copy is counted above; anything else is one new object (its
                // parts are moved in, or counted above).
                if !matches!(op, b'h' | b'j') {
                    spend(OBJECT_BYTES)?;
                }
                stack.push(obj)
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    /// Pickles that build one object from `base` and then double it `rounds` times through the
    /// memo (put, get, get, pair, put).
    fn doubling(base: &[u8], rounds: usize) -> Vec<u8> {
        let mut p = b"\x80\x02".to_vec();
        p.extend(base);
        p.extend(b"q\x00");
        p.extend(b"h\x00h\x00\x86q\x00".repeat(rounds));
        p.push(b'.');
        p
    }

    /// Every kind of object candle's interpreter can build, each as the base of a bomb.
    const BASES: &[&[u8]] = &[
        b"d",
        b"}",
        b"]",
        b")",
        b"(",
        b"(t",
        b"N",
        b"K\x01",
        b"M\x01\x02",
        b"J\x01\x02\x03\x04",
        b"G\x3f\xf0\x00\x00\x00\x00\x00\x00",
        b"\x8a\x02\x01\x02",
        b"\x88",
        b"\x89",
        b"X\x03\x00\x00\x00abc",
        b"cmod\nname\n",
        b"N\x85",
        b"NN\x86",
        b"NNN\x87",
        b"NQ",
        b"cmod\nname\n)R",
        b"ccollections\nOrderedDict\n)R",
        b"cmod\nname\n)\x81",
        b"}}b",
        b"]Na",
        b"](NNe",
        b"}NNs",
        b"}(NNu",
        b"(NNNd",
    ];

    #[test]
    fn every_base_is_run_by_candle_and_each_bomb_is_refused() {
        let budget = Limits::default().pickle_budget();
        for base in BASES {
            // Small: candle runs it to the end, and so does the check.
            let small = doubling(base, 3);
            let mut stack = candle_core::pickle::Stack::empty();
            stack
                .read_loop(&mut std::io::Cursor::new(&small))
                .unwrap_or_else(|e| panic!("{}: {e}", small.escape_ascii()));
            let mut spent = 0;
            check_pickle(&small, &mut spent, budget).unwrap();
            assert!(
                spent > 8 * OBJECT_BYTES,
                "{}: {spent}",
                small.escape_ascii()
            );
            // Doubled 48 times: refused, long before the end.
            let bomb = doubling(base, 48);
            let e = check_pickle(&bomb, &mut 0, budget).unwrap_err();
            assert_eq!(
                e, "reading its pickle would take more than 313 MiB",
                "{base:?}"
            );
        }
        // With 4-byte memo ids too.
        let mut bomb = b"\x80\x02dr\x00\x00\x00\x01".to_vec();
        bomb.extend(b"j\x00\x00\x00\x01j\x00\x00\x00\x01\x86r\x00\x00\x00\x01".repeat(48));
        assert!(check_pickle(&bomb, &mut 0, budget).is_err());
    }

    #[test]
    fn the_check_stops_where_candle_fails() {
        // Each fails in candle before the doubling: `l` is no opcode there, `a` needs a list,
        // `s` a dict, `t` a mark, `h` a memo entry, `X` valid UTF-8; `R` on a plain class makes
        // no dict, so `s` fails after it.
        for base in [
            &b"(l"[..],
            b"}Na",
            b"]NNs",
            b"Nt",
            b"h\x05",
            b"X\x01\x00\x00\x00\xff",
            b"cmod\nOrderedDict\n)RNNs",
            b"}(NNNu",
        ] {
            let bomb = doubling(base, 48);
            let mut stack = candle_core::pickle::Stack::empty();
            assert!(
                stack.read_loop(&mut std::io::Cursor::new(&bomb)).is_err(),
                "{base:?}"
            );
            assert_eq!(check_pickle(&bomb, &mut 0, 1 << 20), Ok(()), "{base:?}");
        }
    }

    #[test]
    fn a_long_pickle_and_a_long_string_are_refused_before_reading() {
        let budget = 1 << 20;
        let mut nones = vec![b'N'; 1 << 20];
        nones.push(b'.');
        let e = check_pickle(&nones, &mut 0, budget).unwrap_err();
        assert_eq!(e, "reading its pickle would take more than 1 MiB");
        // The budget is shared by the pickles of one file.
        let mut spent = budget - 10;
        assert!(check_pickle(b"\x80\x02NN.", &mut spent, budget).is_err());
        let e = check_pickle(b"\x80\x02X\xff\xff\xff\xffabc.", &mut 0, budget).unwrap_err();
        assert_eq!(
            e,
            "the pickle holds a string of 4294967295 bytes but only 4 bytes follow"
        );
        let mut string = b"X\x00\x00\x20\x00".to_vec();
        string.extend(vec![b'a'; 2 << 20]);
        assert!(check_pickle(&string, &mut 0, 64 << 20).is_ok());
        assert!(check_pickle(&string, &mut 0, 3 << 20).is_err());
    }
}
