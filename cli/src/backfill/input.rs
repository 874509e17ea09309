//! Reading backfill files: Avro object container files (`.avro`, any writer schema that
//! resolves to the current one; `container.rs` reads those in the current schema fast) and JSON lines in Avro's JSON encoding (`.jsonl`, `.json`),
//! one record per line, as a sequence of [`Item`]s.
//!
//! A record that cannot be read is not an error of the whole file: it is an
//! [`Item::Unreadable`] with its bytes, which the backfill dead-letters like any bad input. A file
//! that cannot be opened, or whose schema cannot be resolved, stops the backfill before it
//! publishes anything from that file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use boomerang_schemas::{AvroRecord, avro_json};

use super::container;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Avro,
    JsonLines,
}

impl Format {
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("avro") => Ok(Self::Avro),
            Some("jsonl" | "json" | "ndjson") => Ok(Self::JsonLines),
            _ => anyhow::bail!(
                "{}: the format is told by the extension: .avro (object container file) or \
                 .jsonl (JSON lines in Avro's JSON encoding)",
                path.display()
            ),
        }
    }
}

/// One record of a file, by its place in the file (0-based).
pub enum Item<T> {
    Record(T),
    /// The record's bytes (a JSON line), and why it could not be read.
    Unreadable {
        bytes: Vec<u8>,
        why: String,
    },
}

/// Counts the bytes read from a file, for progress.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.read.fetch_add(read as u64, Ordering::Relaxed);
        Ok(read)
    }
}

/// The records of one file, in order.
pub struct Records<T> {
    inner: Box<dyn Iterator<Item = anyhow::Result<Item<T>>> + Send>,
}

impl<T> Iterator for Records<T> {
    type Item = anyhow::Result<Item<T>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

/// Opens `path`; `bytes_read` grows as it is read.
pub fn open<T: AvroRecord + Send + 'static>(
    path: &PathBuf,
    bytes_read: Arc<AtomicU64>,
) -> anyhow::Result<Records<T>> {
    let counting = |file: File| {
        BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: file,
                read: bytes_read.clone(),
            },
        )
    };
    let open_file = || File::open(path).with_context(|| format!("cannot open {}", path.display()));
    let shown = path.display().to_string();
    match Format::of(path)? {
        Format::Avro => {
            // The current schema, uncompressed: split the blocks with the model's own reader.
            let mut reader = BufReader::new(open_file()?);
            if let Ok(header) = container::read_header(&mut reader)
                && container::fast_path_fits::<T>(&header)
            {
                let mut reader = counting(open_file()?);
                container::read_header(&mut reader)?;
                return Ok(Records {
                    inner: Box::new(container::Blocks::<_, T>::new(reader, &header, shown)),
                });
            }
            let counting = counting(open_file()?);
            let reader = apache_avro::Reader::builder(counting)
                .reader_schema(T::KIND.schema())
                .build()
                .with_context(|| {
                    format!(
                        "{shown}: not an Avro object container file whose schema resolves to {}",
                        T::KIND.full_name()
                    )
                })?;
            let inner = reader.map(move |value| {
                // A block that does not decode leaves the rest of the file unreadable too.
                let value = value.with_context(|| format!("{shown}: a corrupt block"))?;
                Ok(match apache_avro::from_value::<T>(&value) {
                    Ok(record) => Item::Record(record),
                    Err(error) => Item::Unreadable {
                        bytes: Vec::new(),
                        why: error.to_string(),
                    },
                })
            });
            Ok(Records {
                inner: Box::new(inner),
            })
        }
        Format::JsonLines => {
            let inner = counting(open_file()?).split(b'\n').filter_map(move |line| {
                let line = match line {
                    Ok(line) => line,
                    Err(error) => {
                        return Some(Err(anyhow::Error::new(error).context(shown.clone())));
                    }
                };
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    return None;
                }
                Some(Ok(match avro_json::decode::<T>(&text) {
                    Ok(record) => Item::Record(record),
                    Err(error) => Item::Unreadable {
                        why: error.to_string(),
                        bytes: line,
                    },
                }))
            });
            Ok(Records {
                inner: Box::new(inner),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_told_by_the_extension() {
        assert_eq!(
            Format::of(Path::new("a/events.avro")).ok(),
            Some(Format::Avro)
        );
        assert_eq!(
            Format::of(Path::new("events.jsonl")).ok(),
            Some(Format::JsonLines)
        );
        assert!(Format::of(Path::new("events.csv")).is_err());
    }
}
