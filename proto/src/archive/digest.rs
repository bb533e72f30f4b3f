//! The content digest (blake3 of the whole original) computed frame by frame in
//! any order. Frames of a power-of-two size of at least one BLAKE3 chunk are whole
//! subtrees of the BLAKE3 tree, so each frame's chaining value is computed alone
//! (blake3's `hazmat` API) and the values are merged at the end: no frame is read
//! twice, whatever order frames are opened in. Other frame sizes are hashed in
//! order. Either way the result is `blake3::hash` of the original (spec §3.2).

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

/// One frame's share of the content digest (`ContentDigest::part`).
#[derive(Debug, Clone, Copy)]
pub enum FramePart {
    /// The chaining value of the frame's subtree.
    Value(ChainingValue),
    /// The digest itself (a one-frame file).
    Root(blake3::Hash),
}

/// The content digest of an archive's frames, fed as they are opened (or packed).
pub struct ContentDigest {
    frame_size: u64,
    frame_count: u32,
    kind: Kind,
}

enum Kind {
    /// Frames in order, into one hasher (`next` is the frame it wants).
    InOrder {
        hasher: Box<blake3::Hasher>,
        next: u32,
    },
    /// Each frame's chaining value (one frame: the root itself).
    Tree {
        values: Vec<Option<ChainingValue>>,
        single: Option<blake3::Hash>,
        /// Frames below it are hashed or not done (`wanted` never looks back).
        scan: u32,
    },
}

impl ContentDigest {
    /// A digest of `frame_count` frames of `frame_size` bytes (the last may be shorter).
    pub fn new(frame_count: u32, frame_size: u32) -> Self {
        let kind = match Self::hashes_apart(frame_size) {
            true => Kind::Tree {
                values: vec![None; frame_count as usize],
                single: None,
                scan: 0,
            },
            false => Kind::InOrder {
                hasher: Box::new(blake3::Hasher::new()),
                next: 0,
            },
        };
        Self {
            frame_size: frame_size as u64,
            frame_count,
            kind,
        }
    }

    /// True when frames of `frame_size` bytes are hashed apart, in any order and
    /// on any thread (`part`, `add_part`); else in order (`add`).
    pub fn hashes_apart(frame_size: u32) -> bool {
        frame_size.is_power_of_two() && frame_size as usize >= blake3::CHUNK_LEN
    }

    /// Frame `index`'s share of the digest of `frame_count` frames of
    /// `frame_size` bytes, computed on any thread; None when frames of that size
    /// are hashed in order.
    pub fn part(frame_size: u32, frame_count: u32, index: u32, plain: &[u8]) -> Option<FramePart> {
        if !Self::hashes_apart(frame_size) {
            return None;
        }
        if frame_count == 1 {
            return Some(FramePart::Root(blake3::hash(plain)));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(index as u64 * frame_size as u64);
        hasher.update(plain);
        Some(FramePart::Value(hasher.finalize_non_root()))
    }

    /// Takes frame `index`'s share, from `part`.
    pub fn add_part(&mut self, index: u32, part: FramePart) {
        if let Kind::Tree { values, single, .. } = &mut self.kind {
            match part {
                FramePart::Root(h) => *single = Some(h),
                FramePart::Value(v) => {
                    if let Some(slot) = values.get_mut(index as usize) {
                        *slot = Some(v);
                    }
                }
            }
        }
    }

    /// Takes frame `index`'s plaintext; false if the digest cannot take it now
    /// (hashing in order, and it is not the next frame).
    pub fn add(&mut self, index: u32, plain: &[u8]) -> bool {
        if let Kind::InOrder { hasher, next } = &mut self.kind {
            if index != *next {
                return false;
            }
            hasher.update(plain);
            *next += 1;
        } else if let Some(part) =
            Self::part(self.frame_size as u32, self.frame_count, index, plain)
        {
            self.add_part(index, part);
        }
        true
    }

    /// A frame in `done` (its plaintext is in the output) that the digest still
    /// needs and can take now: one opened ahead of its turn (in order), or one a
    /// stopped run left in the output.
    pub fn wanted(&mut self, done: &[bool]) -> Option<u32> {
        match &mut self.kind {
            Kind::InOrder { next, .. } => {
                (done.get(*next as usize) == Some(&true)).then_some(*next)
            }
            Kind::Tree {
                values,
                single,
                scan,
            } => {
                while (*scan as usize) < done.len() {
                    let i = *scan as usize;
                    let hashed = match self.frame_count {
                        1 => single.is_some(),
                        _ => values.get(i).is_some_and(Option::is_some),
                    };
                    if done[i] && !hashed {
                        return Some(i as u32);
                    }
                    *scan += 1;
                }
                None
            }
        }
    }

    /// The digest, once every frame is in (None before).
    pub fn finalize(&self) -> Option<blake3::Hash> {
        match &self.kind {
            Kind::InOrder { hasher, next } => {
                (*next == self.frame_count).then(|| hasher.finalize())
            }
            Kind::Tree {
                single: Some(h), ..
            } if self.frame_count == 1 => Some(*h),
            Kind::Tree { values, .. } if self.frame_count > 1 => {
                let values: Option<Vec<ChainingValue>> = values.iter().copied().collect();
                let values = values?;
                let (left, right) = values.split_at(split(values.len()));
                Some(merge_subtrees_root(&merge(left), &merge(right), Mode::Hash))
            }
            Kind::Tree { .. } => None,
        }
    }
}

/// Where the BLAKE3 tree splits `n` (> 1) whole subtrees of equal size: the left
/// side takes the largest power of two below `n`.
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The chaining value of the subtree over `values` (not the root).
fn merge(values: &[ChainingValue]) -> ChainingValue {
    match values.len() {
        1 => values[0],
        n => {
            let (left, right) = values.split_at(split(n));
            merge_subtrees_non_root(&merge(left), &merge(right), Mode::Hash)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(data: &[u8], frame_size: usize) -> Vec<&[u8]> {
        match data.is_empty() {
            true => vec![&data[..0]],
            false => data.chunks(frame_size).collect(),
        }
    }

    #[test]
    fn split_takes_the_largest_power_of_two_below() {
        let got: Vec<usize> = (2..=9).map(split).collect();
        assert_eq!(got, vec![1, 2, 2, 4, 4, 4, 4, 8]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any order, any length, tree or in-order frame sizes: blake3::hash.
        #[test]
        fn frames_in_any_order_give_the_blake3_hash_of_the_whole(
            len in 0usize..40_000,
            size_shift in 6u32..14,
            odd in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut data = vec![0u8; len];
            blake3::Hasher::new_derive_key("test")
                .update(&seed.to_le_bytes())
                .finalize_xof()
                .fill(&mut data);
            let frame_size = (1usize << size_shift) + odd as usize;
            let parts = frames(&data, frame_size);
            let mut order: Vec<u32> = (0..parts.len() as u32).collect();
            order.sort_by_key(|&i| (i as u64).wrapping_mul(seed | 1) % 1009);
            let mut digest = ContentDigest::new(parts.len() as u32, frame_size as u32);
            let mut done = vec![false; parts.len()];
            for i in order {
                done[i as usize] = true;
                // Hashing in order, a frame ahead of its turn is refused now and
                // wanted (read back) when its turn comes.
                digest.add(i, parts[i as usize]);
                while let Some(w) = digest.wanted(&done) {
                    prop_assert!(digest.add(w, parts[w as usize]));
                }
            }
            prop_assert_eq!(digest.finalize(), Some(blake3::hash(&data)));
        }
    }

    #[test]
    fn frames_a_stopped_run_left_are_wanted_once_and_missing_ones_block_the_result() {
        let data = vec![7u8; 5 * 4096 + 10];
        let parts = frames(&data, 4096);
        let mut digest = ContentDigest::new(6, 4096);
        let done = vec![true, false, true, true, false, false];
        let mut wanted = Vec::new();
        while let Some(w) = digest.wanted(&done) {
            digest.add(w, parts[w as usize]);
            wanted.push(w);
        }
        assert_eq!(wanted, vec![0, 2, 3]);
        for i in [5, 1] {
            digest.add(i, parts[i as usize]);
        }
        assert_eq!(digest.finalize(), None, "frame 4 is missing");
        digest.add(4, parts[4]);
        assert_eq!(digest.finalize(), Some(blake3::hash(&data)));
    }
}
