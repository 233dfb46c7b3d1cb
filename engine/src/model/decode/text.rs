//! What the decoders share: text in a declared encoding (a bad byte placed by line and
//! column), positions, and the count of values against `maxValues`.

use std::borrow::Cow;

use serde_json::Value;

use super::format::{DecodeError, Limits, TextEncoding};

/// A JSON parse error's reason without its position (given apart).
pub(crate) fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The text of `bytes` in `encoding`, a byte-order mark dropped; malformed bytes are an
/// error naming their place (never replaced silently). A byte-order mark (UTF-8, UTF-16LE or
/// UTF-16BE) says what the bytes are whatever the declared encoding, as browsers and XML
/// readers take it: Excel's "Unicode text" is UTF-16 with its mark, and a UTF-8 export
/// declared `windows-1252` would otherwise read its mark and every accent as mojibake.
pub(crate) fn text(bytes: &[u8], encoding: TextEncoding) -> Result<Cow<'_, str>, DecodeError> {
    let (enc, bytes) = match encoding_rs::Encoding::for_bom(bytes) {
        Some((bom, len)) => (bom, &bytes[len..]),
        None => (encoding.0, bytes),
    };
    if enc == encoding_rs::UTF_8 {
        return match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(e) => Err(bad_encoding(bytes, e.valid_up_to(), enc)),
        };
    }
    match enc.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(s) => Ok(s),
        None => {
            // Find the first malformed byte for the message.
            let mut decoder = enc.new_decoder_without_bom_handling();
            let mut out = String::with_capacity(bytes.len() * 2 + 16);
            let (result, read) =
                decoder.decode_to_string_without_replacement(bytes, &mut out, true);
            let offset = match result {
                encoding_rs::DecoderResult::Malformed(len, _) => {
                    read.saturating_sub(usize::from(len))
                }
                _ => read,
            };
            Err(bad_encoding(bytes, offset, enc))
        }
    }
}

fn bad_encoding(bytes: &[u8], offset: usize, enc: &'static encoding_rs::Encoding) -> DecodeError {
    let (line, column) = position(bytes, offset);
    DecodeError::Encoding {
        encoding: enc.name(),
        offset,
        line,
        column,
    }
}

/// The 1-based line and column (in bytes) of `offset` in `bytes`.
pub(crate) fn position(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = match before.iter().rposition(|b| *b == b'\n') {
        Some(nl) => before.len() - nl,
        None => before.len() + 1,
    };
    (line, column)
}

/// An XML document's error, placed at the byte `offset` of its text `src`.
pub(crate) fn xml_error(src: &[u8], offset: u64, message: String) -> DecodeError {
    let (line, column) = position(src, offset as usize);
    DecodeError::Xml {
        line,
        column,
        message,
    }
}

/// A count of values against `Limits::max_values`.
pub(crate) struct Budget {
    left: usize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Budget {
        Budget {
            left: limits.max_values,
            max: limits.max_values,
        }
    }

    /// Takes `n` values, or fails once the cap is passed.
    pub(crate) fn take(&mut self, n: usize) -> Result<(), DecodeError> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(DecodeError::TooManyValues { max: self.max }),
        }
    }
}

/// The number of JSON values in `v` (each key counts as one, as `json_count` counts them).
pub(crate) fn count(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count).sum::<usize>(),
        Value::Object(o) => 1 + o.iter().map(|(_, v)| 1 + count(v)).sum::<usize>(),
        _ => 1,
    }
}
