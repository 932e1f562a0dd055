//! The demo backend's Foo line protocol: `REQ <n> [data]` → `ACK <n> [data]`; any other line →
//! `NAK` + the line after its first token. No allocation: answers are appended to the
//! connection's output buffer.

/// Answers every complete line in `input` (appending to `out`); returns the bytes consumed.
pub(super) fn process_foo(input: &[u8], out: &mut Vec<u8>) -> usize {
    let mut pos = 0;
    while let Some(nl) = input[pos..].iter().position(|&b| b == b'\n') {
        foo_answer(&input[pos..pos + nl], out);
        pos += nl + 1;
    }
    pos
}

/// `REQ <decimal seq>[ data]` → `ACK` + rest; anything else → `NAK` + the line after its type token.
fn foo_answer(line: &[u8], out: &mut Vec<u8>) {
    let type_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let (kind, rest) = line.split_at(type_end);
    let valid_req = kind == b"REQ" && {
        let seq = rest.get(1..).unwrap_or(&[]);
        let seq = &seq[..seq.iter().position(|&b| b == b' ').unwrap_or(seq.len())];
        !seq.is_empty() && seq.iter().all(u8::is_ascii_digit)
    };
    out.extend_from_slice(if valid_req { b"ACK" } else { b"NAK" });
    out.extend_from_slice(rest);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foo_lines() {
        let mut out = Vec::new();
        let input = b"REQ 1 hello world\nREQ 2\nPING 3 x\n\nREQ\nREQ x y\nREQ 4 par";
        let used = process_foo(input, &mut out);
        assert_eq!(&input[used..], b"REQ 4 par");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ACK 1 hello world\nACK 2\nNAK 3 x\nNAK\nNAK\nNAK x y\n"
        );
    }
}
