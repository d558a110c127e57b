//! [`Overlay`]: the unsynced data of one file, held in memory over its
//! backing file until an fsync writes it back or a drop discards it.
//!
//! The overlay is a set of whole pages plus the file's logical size. A page
//! enters the overlay on its first write, filled with the backing file's
//! bytes at that moment (read-modify-write), so a page in the overlay always
//! holds the file's current content and a read only has to lay the overlay's
//! pages over the backing file's bytes. Bytes of a page past the logical
//! size are always zero, so growing the file again shows zeros there.
//!
//! The caller keeps the backing file's length at or below the logical size
//! (a truncate goes to both), so backing bytes past the logical size never
//! show through.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

/// Size of one overlay page, in bytes.
pub const PAGE: u64 = 4096;

/// The unsynced writes of one file.
#[derive(Debug)]
pub struct Overlay {
    /// The file's logical size, including unsynced writes and truncates.
    size: u64,
    /// Page index -> the page's current content (`PAGE` bytes).
    pages: BTreeMap<u64, Box<[u8]>>,
    /// Time of the last write or truncate, reported as the file's mtime.
    mtime: SystemTime,
}

/// Reads into `buf` from `offset` until it is full or the file ends;
/// returns the number of bytes read (the rest of `buf` is left alone).
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `usize` from a length that fits in memory (page offsets, read sizes).
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Overlay {
    /// An empty overlay over a backing file of `backing_len` bytes.
    pub fn new(backing_len: u64) -> Self {
        Self {
            size: backing_len,
            pages: BTreeMap::new(),
            mtime: SystemTime::now(),
        }
    }

    /// The file's logical size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The time of the last write or truncate.
    pub fn mtime(&self) -> SystemTime {
        self.mtime
    }

    /// Bytes held in pages, up to the logical size: what a drop loses (at
    /// page granularity).
    pub fn unsynced_bytes(&self) -> u64 {
        self.pages
            .keys()
            .map(|idx| self.size.saturating_sub(idx * PAGE).min(PAGE))
            .sum()
    }

    /// Writes `data` at `offset`, growing the logical size if it ends past
    /// it. A page written for the first time, but not whole, is first filled
    /// from `backing`.
    pub fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let start = to_usize(pos % PAGE);
            let n = to_usize((PAGE - pos % PAGE).min(end - pos));
            let page = match self.pages.entry(idx) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut page = vec![0; to_usize(PAGE)].into_boxed_slice();
                    if n < to_usize(PAGE) && idx * PAGE < self.size {
                        let valid = to_usize((self.size - idx * PAGE).min(PAGE));
                        read_full_at(backing, &mut page[..valid], idx * PAGE)?;
                    }
                    e.insert(page)
                }
            };
            let from = to_usize(pos - offset);
            page[start..start + n].copy_from_slice(&data[from..from + n]);
            pos += n as u64;
        }
        self.size = self.size.max(end);
        self.mtime = SystemTime::now();
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`: the overlay's pages laid over
    /// `backing`, cut at the logical size.
    pub fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; to_usize(end - offset)];
        // Past the backing file's end the buffer stays zero: a hole.
        read_full_at(backing, &mut buf, offset)?;
        for (&idx, page) in self.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let from = (idx * PAGE).max(offset);
            let to = ((idx + 1) * PAGE).min(end);
            buf[to_usize(from - offset)..to_usize(to - offset)]
                .copy_from_slice(&page[to_usize(from - idx * PAGE)..to_usize(to - idx * PAGE)]);
        }
        Ok(buf)
    }

    /// Sets the logical size: pages past it go, and the bytes of the last
    /// page past it become zero. (The caller truncates the backing file.)
    pub fn truncate(&mut self, size: u64) {
        drop(self.pages.split_off(&size.div_ceil(PAGE)));
        if !size.is_multiple_of(PAGE) {
            if let Some(page) = self.pages.get_mut(&(size / PAGE)) {
                page[to_usize(size % PAGE)..].fill(0);
            }
        }
        self.size = size;
        self.mtime = SystemTime::now();
    }

    /// Writes every page to `backing` and sets its length to the logical
    /// size. The caller then syncs `backing` and discards the overlay.
    pub fn write_back(&self, backing: &File) -> io::Result<()> {
        for (&idx, page) in &self.pages {
            let len = self.size.saturating_sub(idx * PAGE).min(PAGE);
            backing.write_all_at(&page[..to_usize(len)], idx * PAGE)?;
        }
        if backing.metadata()?.len() != self.size {
            backing.set_len(self.size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backing file holding `content`.
    fn backing(content: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (dir, file)
    }

    fn backing_content(file: &File) -> Vec<u8> {
        let mut buf = vec![0; file.metadata().unwrap().len() as usize];
        read_full_at(file, &mut buf, 0).unwrap();
        buf
    }

    fn read_all(overlay: &Overlay, file: &File) -> Vec<u8> {
        overlay.read(file, 0, u64::MAX).unwrap()
    }

    #[test]
    fn a_write_is_read_back_over_the_backing_file_which_is_untouched() {
        let (_dir, file) = backing(b"hello world");
        let mut overlay = Overlay::new(11);
        overlay.write(&file, 6, b"WORLD, again").unwrap();
        assert_eq!(overlay.size(), 18);
        assert_eq!(read_all(&overlay, &file), b"hello WORLD, again");
        assert_eq!(overlay.read(&file, 4, 4).unwrap(), b"o WO");
        assert_eq!(overlay.read(&file, 17, 10).unwrap(), b"n");
        assert_eq!(overlay.read(&file, 18, 10).unwrap(), b"");
        assert_eq!(backing_content(&file), b"hello world");
    }

    #[test]
    fn overlapping_writes_keep_the_latest_bytes() {
        let (_dir, file) = backing(b"");
        let mut overlay = Overlay::new(0);
        overlay.write(&file, 0, b"aaaaaaaaaa").unwrap();
        overlay.write(&file, 3, b"bbbb").unwrap();
        overlay.write(&file, 5, b"cc").unwrap();
        assert_eq!(read_all(&overlay, &file), b"aaabbccaaa");
    }

    #[test]
    fn writes_across_pages_and_past_a_hole_read_back_with_zeros_in_the_hole() {
        let base: Vec<u8> = (0..PAGE as usize + 100).map(|i| (i % 251) as u8).collect();
        let (_dir, file) = backing(&base);
        let mut overlay = Overlay::new(base.len() as u64);
        // Spans the end of page 0 and the start of page 1.
        overlay.write(&file, PAGE - 2, b"XXXX").unwrap();
        // Far past the end: pages 2 and 3 stay a hole.
        overlay.write(&file, 4 * PAGE + 1, b"Y").unwrap();
        let mut want = base.clone();
        want[PAGE as usize - 2..PAGE as usize + 2].copy_from_slice(b"XXXX");
        want.resize(4 * PAGE as usize + 1, 0);
        want.push(b'Y');
        assert_eq!(read_all(&overlay, &file), want);
        // Page 0 and 1 were filled from the backing file, so they are whole.
        assert_eq!(overlay.unsynced_bytes(), 2 * PAGE + 2);
    }

    #[test]
    fn truncate_cuts_the_overlay_and_growing_again_shows_zeros() {
        let (_dir, file) = backing(b"");
        let mut overlay = Overlay::new(0);
        overlay.write(&file, 0, &[7; 3 * PAGE as usize]).unwrap();
        overlay.truncate(PAGE + 10);
        file.set_len(PAGE + 10).unwrap(); // as the caller does
        assert_eq!(overlay.size(), PAGE + 10);
        assert_eq!(overlay.unsynced_bytes(), PAGE + 10);
        assert_eq!(read_all(&overlay, &file), vec![7; PAGE as usize + 10]);
        // Grow by a write further on: the cut bytes read as zeros.
        overlay.write(&file, PAGE + 20, b"z").unwrap();
        let mut want = vec![7; PAGE as usize + 10];
        want.resize(PAGE as usize + 20, 0);
        want.push(b'z');
        assert_eq!(read_all(&overlay, &file), want);
        // Grow by a truncate.
        overlay.truncate(3 * PAGE);
        want.resize(3 * PAGE as usize, 0);
        assert_eq!(read_all(&overlay, &file), want);
    }

    #[test]
    fn truncate_of_synced_data_shows_the_backing_file_cut() {
        let (_dir, file) = backing(b"0123456789");
        let mut overlay = Overlay::new(10);
        overlay.write(&file, 10, b"abc").unwrap();
        overlay.truncate(4);
        file.set_len(4).unwrap();
        overlay.truncate(8);
        file.set_len(8).unwrap();
        assert_eq!(read_all(&overlay, &file), b"0123\0\0\0\0");
    }

    #[test]
    fn write_back_makes_the_backing_file_equal_to_what_reads_showed() {
        let (_dir, file) = backing(&[1; 3 * PAGE as usize]);
        let mut overlay = Overlay::new(3 * PAGE);
        overlay.write(&file, 10, b"new").unwrap();
        overlay.write(&file, 5 * PAGE, b"tail").unwrap();
        overlay.truncate(5 * PAGE + 2);
        file.set_len(5 * PAGE + 2).unwrap();
        let seen = read_all(&overlay, &file);
        overlay.write_back(&file).unwrap();
        assert_eq!(backing_content(&file), seen);
        // And a fresh overlay over it reads the same.
        assert_eq!(read_all(&Overlay::new(5 * PAGE + 2), &file), seen);
    }

    #[test]
    fn write_back_shrinks_the_backing_file_to_the_logical_size() {
        let (_dir, file) = backing(b"");
        let mut overlay = Overlay::new(0);
        overlay.write(&file, 0, b"abcdef").unwrap();
        overlay.write_back(&file).unwrap();
        assert_eq!(backing_content(&file), b"abcdef");
    }

    #[test]
    fn dropping_the_overlay_leaves_the_synced_content() {
        let (_dir, file) = backing(b"synced");
        let mut overlay = Overlay::new(6);
        overlay.write(&file, 6, b" and not").unwrap();
        assert_eq!(overlay.unsynced_bytes(), 14);
        drop(overlay);
        assert_eq!(backing_content(&file), b"synced");
    }
}
