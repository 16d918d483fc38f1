//! The tool catalog as clients see it: pages of `TOOL_LIST`.

use bytes::Bytes;
use fovea_core::tool::Descriptor;

/// Most tools in one `TOOL_LIST` page.
pub(crate) const TOOL_PAGE_ITEMS: usize = 100;

/// Most descriptor bytes in one `TOOL_LIST` page (a single larger descriptor still goes
/// alone: descriptors are at most 64 KiB, far below the frame limit).
pub(crate) const TOOL_PAGE_BYTES: usize = 256 * 1024;

/// A page as `TOOL_LIST` carries it: `[{"procedure": name, "tool": descriptor}, …]`.
/// The descriptors are already compact JSON, so they are spliced in, not re-encoded.
pub(crate) fn list_json(page: &[(&str, &Descriptor)]) -> Bytes {
    let mut out = Vec::with_capacity(2 + page.iter().map(|(p, t)| p.len() + t.encoded().len() + 24).sum::<usize>());
    out.push(b'[');
    for (i, (procedure, tool)) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"procedure\":");
        // Serializing a str cannot fail.
        out.extend_from_slice(&serde_json::to_vec(procedure).unwrap_or_default());
        out.extend_from_slice(b",\"tool\":");
        out.extend_from_slice(tool.encoded());
        out.push(b'}');
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_json() {
        let t = Descriptor::parse(br#"{"description":"say \"hi\""}"#).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&list_json(&[("a.b", &t), ("c", &t)])).unwrap();
        assert_eq!(json[0]["procedure"], "a.b");
        assert_eq!(json[1]["tool"]["description"], "say \"hi\"");
        assert_eq!(&list_json(&[])[..], b"[]");
    }
}
