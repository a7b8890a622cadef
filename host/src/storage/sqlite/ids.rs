//! Which report ids are stored: the writer's index of `(endpoint_id, report_id)`.
//!
//! Report ids are random, so a B-tree keyed by them takes each new id on a random
//! page: with a unique index on `reports`, every stored report dirtied a page of
//! its own, one 4 KB log frame per report, the largest single cost of ingest
//! (measured: 46k and 40k reports/s without that index, 34–35k with it).
//!
//! Here a new id first waits in the writer's memory ([`ReportIds`]), split by its
//! first byte into [`RANGES`] key ranges. Once [`FLUSH_AT`] ids wait, the writer
//! moves one range at a time, round robin, into the `report_ids` table, in key
//! order: many ids then share each page they land on. A lookup checks memory, then
//! the table. Only the writer thread inserts reports, so the two together are exact.
//! Most lookups are for new ids, so before the table a Bloom filter per range
//! ([`RangeFilter`]) tells, without reading a page, that an id is not there.
//!
//! Report ids start with the time they were made (see [`crate::report_id`]), and
//! the filters are kept per span of that time ([`BUCKET_SHIFT`]): once the report
//! window has passed a span, its filter is dropped whole ([`ReportIds::forget_before`])
//! and the collection of old reports forgets their waiting ids
//! ([`ReportIds::forget`]), so memory follows the window, not every id ever
//! stored. A dropped filter answers "not there" for every id of its span, which
//! is right because servers refuse those ids by their age before looking them up.
//! Ids whose time is implausible (made before ids carried their time, or by
//! tests) share one filter that is never dropped.
//!
//! With time-ordered ids nearly every new id falls into the same key range: moves
//! of the other (empty) ranges cost nothing, and the busy range's ids, newer than
//! everything in the table, are appended at its end.
//!
//! Nothing depends on the memory surviving a crash: an id waits only for reports
//! already committed to `reports`, and at start every row after the watermark
//! `report_ids_state.indexed_through` that is not in the table waits again. The
//! watermark moves forward when a round over all ranges ends: every row that
//! existed when the round began has been moved by then.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::report_id::time_of;
use crate::storage::{EndpointId, StorageError};

/// Key ranges the waiting ids are split into (by the id's first byte).
pub(crate) const RANGES: usize = 64;
/// How many ids may wait before the writer moves a range to the table. The more
/// wait, the more of them land on each page of the table: at a million stored
/// reports (about 6,700 leaf pages) a range moves ~1,000 ids onto ~100 pages.
pub(crate) const FLUSH_AT: usize = 65_536;

type Key = (i64, [u8; 16]);

/// Each filter holds the ids of 2^16 ms (about 65 s) of id time.
pub(crate) const BUCKET_SHIFT: u32 = 16;
/// Id times (Unix milliseconds) that get filters of their own: from 2020 to 2200.
/// Others, ids made before ids carried their time among them, share one.
const PLAUSIBLE_MILLIS: std::ops::Range<u64> = 1_577_836_800_000..7_258_118_400_000;
/// The bucket of the ids of implausible times; never dropped.
const OTHER_TIMES: u64 = u64::MAX;

/// Which filter holds `report_id`.
fn bucket_of(report_id: &[u8; 16]) -> u64 {
    let time = time_of(report_id);
    if PLAUSIBLE_MILLIS.contains(&time) {
        time >> BUCKET_SHIFT
    } else {
        OTHER_TIMES
    }
}

/// Bits of a filter layer per id it is sized for.
const FILTER_BITS_PER_ID: usize = 12;
/// Bits set per id: about 0.3 % false positives in a full layer.
const FILTER_PROBES: u64 = 7;
/// Ids the first layer of a range is sized for at least.
const FILTER_MIN_IDS: usize = 64;

/// One Bloom filter sized for `capacity` ids.
struct IdFilter {
    bits: Vec<u64>,
    ids: usize,
    capacity: usize,
}

impl IdFilter {
    fn new(capacity: usize) -> IdFilter {
        IdFilter {
            bits: vec![0; (capacity * FILTER_BITS_PER_ID).div_ceil(64).max(1)],
            ids: 0,
            capacity,
        }
    }

    /// The bits of `hash`: double hashing, each reduced to the filter's size by a
    /// multiply-shift.
    fn positions(&self, hash: u64) -> impl Iterator<Item = usize> + use<> {
        let size = (self.bits.len() * 64) as u128;
        let step = (hash >> 32) | 1;
        (0..FILTER_PROBES).map(move |i| {
            let mixed = hash
                .wrapping_add(i.wrapping_mul(step))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((u128::from(mixed) * size) >> 64) as usize
        })
    }

    fn insert(&mut self, hash: u64) {
        for bit in self.positions(hash) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
        self.ids += 1;
    }

    fn may_contain(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

/// What one key range of `report_ids` holds, as Bloom filter layers: "no" is
/// certain, "maybe" costs a lookup in the table. A full layer stays and a new
/// one, twice the size of all before it, takes the next ids: the filter grows
/// without reading the table again, and a lookup asks a few layers (their sizes
/// triple; seven per range at a million ids).
struct RangeFilter {
    layers: Vec<IdFilter>,
}

impl RangeFilter {
    /// A filter of `hashes`, with room for as many again.
    fn of(hashes: &[u64]) -> RangeFilter {
        let mut layer = IdFilter::new((hashes.len() * 2).max(FILTER_MIN_IDS));
        for &hash in hashes {
            layer.insert(hash);
        }
        RangeFilter {
            layers: vec![layer],
        }
    }

    fn insert(&mut self, hash: u64) {
        let full = self
            .layers
            .last()
            .is_none_or(|last| last.ids >= last.capacity);
        if full {
            let held: usize = self.layers.iter().map(|layer| layer.capacity).sum();
            self.layers
                .push(IdFilter::new((held * 2).max(FILTER_MIN_IDS)));
        }
        if let Some(last) = self.layers.last_mut() {
            last.insert(hash);
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        self.layers.iter().any(|layer| layer.may_contain(hash))
    }

    /// An empty filter; its first layer is made by the first insert.
    fn empty() -> RangeFilter {
        RangeFilter { layers: Vec::new() }
    }
}

/// The ids of stored reports not yet in `report_ids`, with their rows; see the
/// module documentation.
pub(crate) struct ReportIds {
    /// One map per key range ([`RANGES`] of them, fewer in tests).
    waiting: Vec<HashMap<Key, i64>>,
    /// What `report_ids` holds, per span of id time ([`bucket_of`]).
    filters: BTreeMap<u64, RangeFilter>,
    /// Keyed per process, so that ids chosen to collide in one server's filters
    /// cannot be planned.
    hasher: RandomState,
    len: usize,
    /// Added in the writer's open transaction: forgotten if it rolls back.
    uncommitted: Vec<Key>,
    /// The range the next move takes.
    next_range: usize,
    /// The highest report row when the current round over the ranges began.
    round_start: i64,
    flush_at: usize,
}

impl ReportIds {
    /// Reads what waits from the database (the rows after the watermark that are
    /// not in `report_ids`); `flush_at` ids may wait before a move.
    pub(crate) fn load(conn: &Connection, flush_at: usize) -> rusqlite::Result<ReportIds> {
        Self::load_with_ranges(conn, flush_at, RANGES)
    }

    /// [`Self::load`] with `ranges` key ranges (1 to 256) instead of [`RANGES`].
    pub(crate) fn load_with_ranges(
        conn: &Connection,
        flush_at: usize,
        ranges: usize,
    ) -> rusqlite::Result<ReportIds> {
        let indexed_through: i64 = conn.query_row(
            "SELECT indexed_through FROM report_ids_state WHERE singleton = 0",
            [],
            |row| row.get(0),
        )?;
        let mut ids = ReportIds {
            waiting: (0..ranges.clamp(1, 256)).map(|_| HashMap::new()).collect(),
            filters: BTreeMap::new(),
            hasher: RandomState::new(),
            len: 0,
            uncommitted: Vec::new(),
            next_range: 0,
            round_start: indexed_through,
            flush_at: flush_at.max(1),
        };
        let mut statement = conn.prepare(
            "SELECT r.id, r.endpoint_id, r.report_id FROM reports AS r \
             WHERE r.id > ?1 AND NOT EXISTS (SELECT 1 FROM report_ids AS i \
             WHERE i.endpoint_id = r.endpoint_id AND i.report_id = r.report_id)",
        )?;
        let mut rows = statement.query([indexed_through])?;
        while let Some(row) = rows.next()? {
            let report_id: Vec<u8> = row.get(2)?;
            let Ok(report_id) = <[u8; 16]>::try_from(report_id.as_slice()) else {
                continue;
            };
            ids.put((row.get(1)?, report_id), row.get(0)?);
        }
        ids.filters = ids.read_filters(conn)?;
        Ok(ids)
    }

    /// How many ids wait in memory.
    pub(crate) fn waiting(&self) -> usize {
        self.len
    }

    fn range_of(&self, key: &Key) -> usize {
        usize::from(key.1[0]) * self.waiting.len() / 256
    }

    /// The filters of every id in `report_ids`, one read of the table.
    fn read_filters(&self, conn: &Connection) -> rusqlite::Result<BTreeMap<u64, RangeFilter>> {
        let mut statement = conn.prepare_cached("SELECT endpoint_id, report_id FROM report_ids")?;
        let mut hashes: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let report_id: Vec<u8> = row.get(1)?;
            if let Ok(report_id) = <[u8; 16]>::try_from(report_id.as_slice()) {
                let hash = self.hasher.hash_one((row.get::<_, i64>(0)?, report_id));
                hashes.entry(bucket_of(&report_id)).or_default().push(hash);
            }
        }
        Ok(hashes
            .into_iter()
            .map(|(bucket, hashes)| (bucket, RangeFilter::of(&hashes)))
            .collect())
    }

    fn put(&mut self, key: Key, row: i64) {
        let range = self.range_of(&key);
        if self.waiting[range].insert(key, row).is_none() {
            self.len += 1;
        }
    }

    /// The row of the report stored under `report_id`, if any.
    pub(crate) fn find(
        &self,
        conn: &Connection,
        endpoint: EndpointId,
        report_id: &[u8; 16],
    ) -> rusqlite::Result<Option<i64>> {
        let key = (endpoint.0, *report_id);
        let range = self.range_of(&key);
        if let Some(&row) = self.waiting[range].get(&key) {
            return Ok(Some(row));
        }
        let held = self
            .filters
            .get(&bucket_of(report_id))
            .is_some_and(|filter| filter.may_contain(self.hasher.hash_one(key)));
        if !held {
            return Ok(None);
        }
        conn.prepare_cached("SELECT row FROM report_ids WHERE endpoint_id = ?1 AND report_id = ?2")?
            .query_row(params![endpoint.0, report_id], |row| row.get(0))
            .optional()
    }

    /// Records a report inserted in the writer's open transaction.
    pub(crate) fn added(&mut self, endpoint: EndpointId, report_id: [u8; 16], row: i64) {
        let key = (endpoint.0, report_id);
        self.put(key, row);
        self.uncommitted.push(key);
    }

    /// The writer's transaction committed: what it added stays.
    pub(crate) fn commit(&mut self) {
        self.uncommitted.clear();
    }

    /// The writer's transaction rolled back: forgets what it added.
    pub(crate) fn roll_back(&mut self) {
        for key in std::mem::take(&mut self.uncommitted) {
            let range = self.range_of(&key);
            if self.waiting[range].remove(&key).is_some() {
                self.len -= 1;
            }
        }
    }

    /// Moves the next range of waiting ids to `report_ids`, in its own transaction,
    /// if enough wait; returns how many moved. On failure nothing moves and the ids
    /// keep waiting.
    pub(crate) fn flush(&mut self, conn: &mut Connection) -> Result<usize, StorageError> {
        if self.len < self.flush_at {
            return Ok(0);
        }
        // Skip the empty ranges between the first and the last of a round (with
        // time-ordered ids, nearly all of them): nothing to move, no transaction.
        let last = self.waiting.len() - 1;
        while self.next_range != 0
            && self.next_range != last
            && self.waiting[self.next_range].is_empty()
        {
            self.next_range += 1;
        }
        let range = self.next_range;
        let mut keys: Vec<(&Key, &i64)> = self.waiting[range].iter().collect();
        keys.sort_unstable();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read from the table, not from what was added: a rolled-back row's id is
        // given again to the next insert.
        let round_start = if range == 0 {
            tx.query_row("SELECT coalesce(max(id), 0) FROM reports", [], |row| {
                row.get(0)
            })?
        } else {
            self.round_start
        };
        {
            // A report whose endpoint was deleted meanwhile is gone with its id.
            // (Endpoint ids are never reused, nor are report rows.)
            let mut insert = tx.prepare_cached(
                "INSERT INTO report_ids (endpoint_id, report_id, row) SELECT ?1, ?2, ?3 \
                 WHERE EXISTS (SELECT 1 FROM endpoints WHERE id = ?1)",
            )?;
            for ((endpoint, report_id), row) in &keys {
                insert.execute(params![endpoint, report_id, row])?;
            }
        }
        if range == self.waiting.len() - 1 {
            tx.execute(
                "UPDATE report_ids_state SET indexed_through = ?1 WHERE singleton = 0",
                [round_start],
            )?;
        }
        tx.commit()?;
        let moved = keys.len();
        for (key, _) in keys {
            let hash = self.hasher.hash_one(key);
            self.filters
                .entry(bucket_of(&key.1))
                .or_insert_with(RangeFilter::empty)
                .insert(hash);
        }
        self.waiting[range] = HashMap::new();
        self.len -= moved;
        self.round_start = round_start;
        self.next_range = (range + 1) % self.waiting.len();
        Ok(moved)
    }
}

impl ReportIds {
    /// The waiting ids of `endpoint` made before `keep_from` whose rows come after
    /// `after_row`, at most `limit`, with their rows: what the collection of old
    /// reports deletes (and then [`Self::forget`]s).
    pub(crate) fn waiting_before(
        &self,
        endpoint: EndpointId,
        keep_from: &[u8; 16],
        after_row: i64,
        limit: usize,
    ) -> Vec<([u8; 16], i64)> {
        self.waiting
            .iter()
            .flat_map(|range| range.iter())
            .filter(|((e, id), row)| *e == endpoint.0 && id < keep_from && **row > after_row)
            .map(|((_, id), row)| (*id, *row))
            .take(limit)
            .collect()
    }

    /// Forgets waiting ids of `endpoint` whose reports were deleted (committed).
    pub(crate) fn forget(&mut self, endpoint: EndpointId, report_ids: &[[u8; 16]]) {
        for report_id in report_ids {
            let key = (endpoint.0, *report_id);
            let range = self.range_of(&key);
            if self.waiting[range].remove(&key).is_some() {
                self.len -= 1;
            }
        }
    }

    /// Drops the filters of the ids made before `keep_from`, all of them outside
    /// the report window (see the module documentation); returns how many.
    pub(crate) fn forget_before(&mut self, keep_from: &[u8; 16]) -> usize {
        let first_kept = time_of(keep_from) >> BUCKET_SHIFT;
        let kept = self.filters.split_off(&first_kept);
        let dropped = self.filters.len();
        self.filters = kept;
        dropped
    }

    /// How many time spans have filters (memory follows the window).
    #[cfg(test)]
    pub(crate) fn filter_spans(&self) -> usize {
        self.filters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_knows_every_id_it_holds_and_few_others() {
        let hasher = RandomState::new();
        let held: Vec<u64> = (0..1_000u64).map(|n| hasher.hash_one(n)).collect();
        let mut filter = RangeFilter::of(&held);
        // Grown from 1,000 ids to 100,000: layers added, none read again.
        for n in 1_000..100_000u64 {
            filter.insert(hasher.hash_one(n));
        }
        assert!(filter.layers.len() > 2, "{} layers", filter.layers.len());
        assert!((0..100_000u64).all(|n| filter.may_contain(hasher.hash_one(n))));
        let others = (100_000..200_000u64)
            .filter(|&n| filter.may_contain(hasher.hash_one(n)))
            .count();
        assert!(others < 2_000, "{others} false positives in 100,000");
        assert!(others > 0, "a filter that is never unsure is suspicious");
    }
}
