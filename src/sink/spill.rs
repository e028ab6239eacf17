//! The spill file, `data_dir/spill/<sink>.jsonl`: events from TCP and stdin sources that
//! were not delivered before a shutdown, one per line, sent before any newer event at the
//! next start.
//!
//! It is loaded within the sink's memory budget, however large it grew. At start, before
//! any source runs, the sink reserves its whole free budget ([`Budget::reserve_free`]) and
//! loads the lines that fit. While lines are left in the file, the budget that delivered
//! events free stays reserved for them ([`Spill::release`]) until the sink loads the next
//! lines ([`Spill::load`]): the spilled events keep going first and the sources wait. Once
//! every line is loaded, the reservation goes back to the budget.
//!
//! The file is never changed while flaghook runs, so a crash sends it again from its start
//! (duplicates, never losses). It is removed once every event in it was delivered or
//! dead-lettered; at shutdown, it is replaced by what is left ([`finish`]): the loaded
//! events not delivered, the lines never loaded, then the newer events not delivered.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::data_dir;
use crate::event::{Item, Origin};
use crate::source::{Budget, Cost};

/// A spill file being loaded.
#[derive(Debug)]
pub(crate) struct Spill {
    path: PathBuf,
    lines: Lines,
    /// Budget reserved for the lines not loaded yet.
    room: Cost,
    /// Events loaded and neither delivered nor dead-lettered yet. They entered before any
    /// newer event, so they are the first the sink resolves.
    unresolved: usize,
    /// Loaded events given up at shutdown, in order.
    abandoned: Vec<Bytes>,
}

#[derive(Debug)]
enum Lines {
    /// Lines are left to load; `next` was read but did not fit yet.
    Left {
        reader: BufReader<File>,
        next: Option<Bytes>,
    },
    /// Every line was loaded.
    Loaded,
    /// Reading failed: the file stays as it is.
    Broken,
}

impl Spill {
    /// Opens the spill file at `path`, if any, and loads what fits `budget`, which no source
    /// may have taken from yet. Returns the spill and the events loaded.
    pub(crate) fn open(sink: &str, path: &Path, budget: &Budget) -> Option<(Spill, Vec<Item>)> {
        let reader = match data_dir::open_read(path) {
            Ok(file) => BufReader::new(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(sink, path = %path.display(), error = %e, "cannot read the spill file; its events stay in it");
                return None;
            }
        };
        let mut spill = Spill {
            path: path.to_owned(),
            lines: Lines::Left { reader, next: None },
            room: Cost::default(),
            unresolved: 0,
            abandoned: Vec::new(),
        };
        spill.room = budget.reserve_free();
        let loaded = spill.load(budget);
        if spill.done() {
            spill.remove(); // no event in it
            return None;
        }
        let more = if spill.all_loaded() {
            ""
        } else {
            "; the rest stays in the file until there is room in memory"
        };
        tracing::info!(sink, events = loaded.len(), path = %path.display(), "sending events spilled at the last shutdown first{more}");
        Some((spill, loaded))
    }

    /// `items` left memory (delivered, dead-lettered or given up), freeing `freed`, which
    /// no longer holds anything: the spilled events among them are resolved, and the
    /// budget freed is kept for the lines not loaded yet. At shutdown (no more loading), or
    /// once every line is loaded, it goes back.
    pub(crate) fn release(
        &mut self,
        items: &[Item],
        freed: Cost,
        budget: &Budget,
        shutting_down: bool,
    ) {
        let spilled = items.iter().filter(|i| is_spilled(i)).count();
        self.unresolved -= spilled.min(self.unresolved);
        budget.unhold(freed);
        self.room += freed;
        if shutting_down || self.all_loaded() {
            budget.give_back(std::mem::take(&mut self.room));
        }
    }

    /// Loads the lines that fit the budget kept for them; once every line is loaded, the
    /// rest of it goes back.
    pub(crate) fn load(&mut self, budget: &Budget) -> Vec<Item> {
        let loaded = self.load_fitting(budget);
        if self.all_loaded() {
            budget.give_back(std::mem::take(&mut self.room));
        }
        loaded
    }

    /// Loads the lines that fit the room.
    fn load_fitting(&mut self, budget: &Budget) -> Vec<Item> {
        let mut items = Vec::new();
        while let Lines::Left { reader, next } = &mut self.lines {
            let line = match next
                .take()
                .map_or_else(|| read_line(reader), |l| Ok(Some(l)))
            {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.lines = Lines::Loaded;
                    break;
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot read the rest of the spill file; it is kept as it is");
                    self.lines = Lines::Broken;
                    break;
                }
            };
            let cost = Cost {
                events: 1,
                bytes: budget.line_bytes(line.len()),
            };
            if !self.room.covers(cost) {
                *next = Some(line);
                break;
            }
            self.room -= cost;
            budget.hold(cost);
            items.push(Item::Event {
                event: line,
                origin: Origin::Spill,
                held: cost.bytes,
            });
        }
        self.unresolved += items.len();
        items
    }

    /// Every line was loaded (or reading failed): none waits for room.
    fn all_loaded(&self) -> bool {
        !matches!(self.lines, Lines::Left { .. })
    }

    /// At shutdown: `items` are given up; keeps their spilled events for [`finish`] and
    /// returns how many there were.
    pub(crate) fn abandon(&mut self, items: &[Item]) -> usize {
        let before = self.abandoned.len();
        let spilled = items
            .iter()
            .filter(|i| is_spilled(i))
            .filter_map(Item::event);
        self.abandoned.extend(spilled.cloned());
        self.abandoned.len() - before
    }

    /// Every event of the file was loaded and delivered or dead-lettered: the file can go.
    pub(crate) fn done(&self) -> bool {
        matches!(self.lines, Lines::Loaded) && self.unresolved == 0 && self.abandoned.is_empty()
    }

    /// Removes the file, once [`Spill::done`].
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn is_spilled(item: &Item) -> bool {
    matches!(
        item,
        Item::Event {
            origin: Origin::Spill,
            ..
        }
    )
}

/// The next non-empty line, without its newline.
fn read_line(reader: &mut BufReader<File>) -> io::Result<Option<Bytes>> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if !line.is_empty() {
            return Ok(Some(Bytes::copy_from_slice(&line)));
        }
    }
}

/// What [`finish`] wrote.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Events in the file.
    pub(crate) events: usize,
    /// Of them, lines of the old file that were never loaded.
    pub(crate) never_loaded: usize,
}

/// At shutdown: replaces the spill file at `path` with what is left of `spill` (the file
/// this run loaded, if any) and then `newer`, the events from sources given up; removes it
/// when nothing is left.
pub(crate) fn finish(path: &Path, spill: Option<Spill>, newer: &[Bytes]) -> io::Result<Written> {
    let mut written = Written::default();
    let Some(spill) = spill else {
        if newer.is_empty() {
            return Ok(written);
        }
        // A regular file here is one that could not be read at start: it keeps its lines,
        // and the newer events go after them. (A planted symlink is replaced, not followed.)
        let unread = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
        if unread {
            let mut file = data_dir::open_append(path)?;
            write_events(&mut file, newer, &mut written)?;
            file.sync_all()?;
        } else {
            write_new(path, |w| write_events(w, newer, &mut written))?;
        }
        return Ok(written);
    };
    match spill.lines {
        Lines::Loaded if spill.abandoned.is_empty() && newer.is_empty() => spill.remove(),
        Lines::Broken => {
            // The file still holds every line it had, the abandoned ones included.
            let mut file = data_dir::open_append(path)?;
            write_events(&mut file, newer, &mut written)?;
            file.sync_all()?;
        }
        Lines::Loaded | Lines::Left { .. } => {
            let abandoned = &spill.abandoned;
            let mut rest = match spill.lines {
                Lines::Left { reader, next } => Some((reader, next)),
                _ => None,
            };
            write_new(path, |w| {
                write_events(w, abandoned, &mut written)?;
                if let Some((reader, next)) = rest.as_mut() {
                    let before = written.events;
                    write_events(w, next.as_slice(), &mut written)?;
                    written.events += copy_lines(reader, w)?;
                    written.never_loaded = written.events - before;
                }
                write_events(w, newer, &mut written)
            })?;
        }
    }
    Ok(written)
}

fn write_new(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    data_dir::write_atomically_with(path, write)
}

fn write_events(w: &mut dyn Write, events: &[Bytes], written: &mut Written) -> io::Result<()> {
    for event in events {
        w.write_all(event)?;
        w.write_all(b"\n")?;
    }
    written.events += events.len();
    Ok(())
}

/// Copies what is left of `reader` to `w`, ending it with a newline; returns the lines.
fn copy_lines(reader: &mut BufReader<File>, w: &mut dyn Write) -> io::Result<usize> {
    let mut lines = 0;
    let mut last = b'\n';
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        lines += memchr::memchr_iter(b'\n', chunk).count();
        last = chunk[n - 1];
        w.write_all(chunk)?;
    }
    if last != b'\n' {
        w.write_all(b"\n")?;
        lines += 1;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill_file(lines: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook.jsonl");
        std::fs::write(&path, lines).unwrap();
        (dir, path)
    }

    /// A spill file that could not be read at start is not replaced at shutdown: the newer
    /// events go after its lines.
    #[test]
    fn a_spill_file_not_read_at_start_keeps_its_lines() {
        let (_dir, path) = spill_file("{\"old\":1}\n");
        let newer = [Bytes::from_static(b"{\"new\":2}")];
        finish(&path, None, &newer).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"old\":1}\n{\"new\":2}\n"
        );
    }

    fn events(items: &[Item]) -> Vec<&[u8]> {
        items.iter().map(|i| &i.event().unwrap()[..]).collect()
    }

    fn cost(events: usize, bytes: usize) -> Cost {
        Cost { events, bytes }
    }

    #[test]
    fn lines_load_as_delivered_events_make_room_and_the_rest_stays_in_the_file() {
        let (_dir, path) = spill_file("aaa\nbbb\n\nc\ndd");
        let budget = Budget::new(10, 5);
        let (mut spill, first) = Spill::open("webhook", &path, &budget).unwrap();
        assert_eq!(events(&first), [b"aaa"], "bbb does not fit beside it");
        assert_eq!(budget.peak(), cost(1, 3));
        assert_eq!(
            budget.reserve_free(),
            cost(0, 0),
            "the rest is kept for the file"
        );

        spill.release(&first, cost(1, 3), &budget, false);
        let next = spill.load(&budget);
        assert_eq!(events(&next), [&b"bbb"[..], b"c"], "dd does not fit");

        // Shutdown: both are given up.
        assert_eq!(spill.abandon(&next), 2);
        spill.release(&next, cost(2, 4), &budget, true);
        assert_eq!(budget.reserve_free(), cost(10, 5), "the room went back");
        let newer = [Bytes::from_static(b"n1")];
        let written = finish(&path, Some(spill), &newer).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bbb\nc\ndd\nn1\n");
        assert_eq!((written.events, written.never_loaded), (4, 1));
    }

    #[test]
    fn a_spill_file_whose_events_are_all_delivered_is_removed() {
        let (_dir, path) = spill_file("a\nb\n");
        let budget = Budget::new(10, 100);
        let (mut spill, first) = Spill::open("webhook", &path, &budget).unwrap();
        assert_eq!(first.len(), 2);
        let free = budget.reserve_free();
        assert_eq!(free, cost(8, 98), "all loaded: the rest went back");
        budget.give_back(free);
        assert!(!spill.done());
        spill.release(&first, cost(2, 2), &budget, false);
        assert!(spill.load(&budget).is_empty());
        assert!(spill.done());
        assert!(finish(&path, Some(spill), &[]).is_ok());
        assert!(!path.exists());
    }
}
