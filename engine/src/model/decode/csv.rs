//! CSV: rows read with the `csv` crate (RFC 4180 quoting, a declared delimiter and quote
//! character), after the text is read in its declared encoding. The document is an array of
//! objects, one per row, keyed by the header row or the declared columns; values are strings,
//! and an empty cell is left out (as a missing value). An unterminated quote, a row with
//! another number of cells than the header, or a repeated column name is an error naming the
//! record and its line.

use serde_json::{Map, Value};

use super::format::{CsvFormat, DecodeError, Limits};
use super::text::{Budget, text};

/// Decodes CSV text into an array of row objects.
pub(super) fn decode(f: &CsvFormat, bytes: &[u8], limits: Limits) -> Result<Value, DecodeError> {
    let text = text(bytes, f.encoding)?;
    unterminated_quote(&text, f)?;
    let mut budget = Budget::new(limits);
    budget.take(1)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(f.delimiter)
        .quote(f.quote)
        .from_reader(text.as_bytes());
    let mut names: Option<Vec<String>> = (!f.columns.is_empty()).then(|| f.columns.clone());
    let mut skip_header = f.header;
    let mut out = Vec::new();
    let mut row = csv::StringRecord::new();
    let mut number = 0usize;
    loop {
        // Byte offsets, turned into lines only for an error: the reader counts only `\n`.
        let at = reader.position().byte();
        let more = reader.read_record(&mut row).map_err(|e| DecodeError::Csv {
            record: number + 1,
            line: line_at(&text, e.position().map_or(at, csv::Position::byte)),
            message: e.to_string(),
        })?;
        if !more {
            break;
        }
        let at = row.position().map_or(at, csv::Position::byte);
        if skip_header {
            skip_header = false;
            if names.is_none() {
                names = Some(header(&row, line_at(&text, at))?);
            }
            continue;
        }
        number += 1;
        let Some(names) = &names else {
            // Neither a header nor columns: the checks of the definition refuse this.
            return Err(DecodeError::Csv {
                record: number,
                line: line_at(&text, at),
                message: "no column names: declare `header: true` or `columns`".into(),
            });
        };
        if row.len() != names.len() {
            return Err(DecodeError::Csv {
                record: number,
                line: line_at(&text, at),
                message: format!(
                    "{} cell{} where the header has {} columns",
                    row.len(),
                    if row.len() == 1 { "" } else { "s" },
                    names.len()
                ),
            });
        }
        budget.take(1)?;
        let mut obj = Map::new();
        for (name, cell) in names.iter().zip(row.iter()) {
            if cell.is_empty() {
                continue;
            }
            budget.take(2)?;
            obj.insert(name.clone(), Value::String(cell.to_owned()));
        }
        out.push(Value::Object(obj));
    }
    Ok(Value::Array(out))
}

/// The column names of a header row: non-empty, each once.
fn header(row: &csv::StringRecord, line: usize) -> Result<Vec<String>, DecodeError> {
    let mut names: Vec<String> = Vec::with_capacity(row.len());
    for cell in row.iter() {
        let name = cell.trim();
        let problem = if name.is_empty() {
            Some("a column of the header row has no name".to_owned())
        } else if names.iter().any(|n| n == name) {
            Some(format!("the header names column `{name}` twice"))
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(DecodeError::Csv {
                record: 0,
                line,
                message,
            });
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Whether the byte at `i` ends a line: `\n`, or a `\r` not followed by `\n` (old Mac
/// exports); `\r\n` is one line end.
fn ends_line(bytes: &[u8], i: usize) -> bool {
    bytes[i] == b'\n' || (bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
}

/// The line (from 1) of the record the reader placed at `offset` of `text`, line ends read
/// as the reader reads them. The reader places a record before the blank lines it skipped
/// to reach it, so those are passed over first.
fn line_at(text: &str, offset: u64) -> usize {
    let bytes = text.as_bytes();
    let mut end = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
    while matches!(bytes.get(end), Some(b'\r' | b'\n')) {
        end += 1;
    }
    1 + (0..end).filter(|&i| ends_line(bytes, i)).count()
}

/// A quoted field left open at the end of the text (which the `csv` crate reads as ending
/// there) is an error at the line where it opened.
pub(super) fn unterminated_quote(text: &str, f: &CsvFormat) -> Result<(), DecodeError> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let mut line = 1usize;
    let mut record = 0usize;
    let (mut open_line, mut open_record) = (0, 0);
    // Whether the row so far holds anything: a blank line is no record (the reader skips it).
    let mut row_has_bytes = false;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        // `\n`, `\r\n` and a lone `\r` (old Mac exports) each end a row, as the reader
        // takes them; `\r\n` is one line.
        let end_of_row = b == b'\n' || b == b'\r';
        let new_line = ends_line(bytes, i);
        if !end_of_row {
            row_has_bytes = true;
        }
        state = match state {
            State::FieldStart if b == f.quote => {
                open_line = line;
                open_record = record;
                State::Quoted
            }
            State::Quoted if b == f.quote => State::QuoteInQuoted,
            State::Quoted => State::Quoted,
            State::QuoteInQuoted if b == f.quote => State::Quoted,
            _ if b == f.delimiter => State::FieldStart,
            _ if end_of_row => State::FieldStart,
            _ => State::Unquoted,
        };
        if end_of_row {
            if new_line {
                line += 1;
            }
            if state == State::FieldStart {
                if row_has_bytes {
                    record += 1;
                }
                row_has_bytes = false;
            }
        }
    }
    if state == State::Quoted {
        // Rows before the header row are not records.
        let record = if f.header {
            open_record
        } else {
            open_record + 1
        };
        return Err(DecodeError::Csv {
            record,
            line: open_line,
            message: "a quoted field is never closed".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decode::format::TextEncoding;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_values: 1000 };

    #[test]
    fn header_rows_name_the_fields_and_quotes_hold_delimiters_and_lines() {
        let f = CsvFormat::default();
        let got = decode(
            &f,
            b"id,name,note\r\n1,\"Doe, Jane\",\"two\nlines\"\n2,Roe,\n",
            LIMITS,
        )
        .expect("decoded");
        assert_eq!(
            got,
            json!([
                {"id": "1", "name": "Doe, Jane", "note": "two\nlines"},
                {"id": "2", "name": "Roe"}
            ])
        );
    }

    #[test]
    fn declared_columns_delimiter_and_latin1() {
        let f = CsvFormat {
            header: false,
            columns: vec!["code".into(), "name".into()],
            delimiter: b';',
            quote: b'\'',
            encoding: TextEncoding::for_label("latin1").expect("label"),
        };
        let got = decode(&f, b"A1;'M\xFCller; Hans'\n", LIMITS).expect("decoded");
        assert_eq!(got, json!([{"code": "A1", "name": "Müller; Hans"}]));
    }

    #[test]
    fn an_unterminated_quote_names_its_record_and_line() {
        let f = CsvFormat::default();
        let err = decode(&f, b"id,name\n1,ok\n2,\"open\n3,x\n", LIMITS).expect_err("open");
        assert_eq!(
            err,
            DecodeError::Csv {
                record: 2,
                line: 3,
                message: "a quoted field is never closed".into()
            }
        );
    }

    #[test]
    fn a_short_row_and_a_repeated_column_are_errors() {
        let f = CsvFormat::default();
        let err = decode(&f, b"a,b\n1,2\n3\n", LIMITS).expect_err("short row");
        assert!(
            matches!(
                err,
                DecodeError::Csv {
                    record: 2,
                    line: 3,
                    ..
                }
            ),
            "{err}"
        );
        let err = decode(&f, b"a,a\n1,2\n", LIMITS).expect_err("repeated column");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn errors_in_files_with_lone_carriage_returns_name_their_line() {
        let f = CsvFormat::default();
        let err = decode(&f, b"a,b\r1,2\r3\r", LIMITS).expect_err("short row");
        assert_eq!(
            err,
            DecodeError::Csv {
                record: 2,
                line: 3,
                message: "1 cell where the header has 2 columns".into()
            }
        );
        // Mixed line ends: `\r\n` is one line, a lone `\r` another.
        let err = decode(&f, b"a,b\r\n1,2\r3,4\n5\n", LIMITS).expect_err("short row");
        assert!(
            matches!(
                err,
                DecodeError::Csv {
                    record: 3,
                    line: 4,
                    ..
                }
            ),
            "{err}"
        );
        let err = decode(&f, b"\r\ra,a\r1,2\r", LIMITS).expect_err("repeated column");
        assert!(
            matches!(
                err,
                DecodeError::Csv {
                    record: 0,
                    line: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn invalid_utf8_and_the_value_cap_are_errors() {
        let f = CsvFormat::default();
        let err = decode(&f, b"a\n\xFF\n", LIMITS).expect_err("not UTF-8");
        assert!(
            matches!(err, DecodeError::Encoding { line: 2, .. }),
            "{err}"
        );
        let body = format!("a,b\n{}", "1,2\n".repeat(400));
        let err = decode(&f, body.as_bytes(), LIMITS).expect_err("over the cap");
        assert_eq!(err, DecodeError::TooManyValues { max: 1000 });
    }
}
