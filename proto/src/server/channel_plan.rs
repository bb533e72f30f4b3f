//! Which channel numbers a server takes on its directory group: the lowest ones
//! whose addresses no server heard there uses, so that servers sharing a group
//! do not loop on one another's channels (spec §7.8).

/// Most channel numbers looked at past the ones wanted: a listing names at most
/// this many channels in use (and a forged flood of them only pushes ours up).
pub const MAX_CHANNELS_SKIPPED: u32 = 4096;

/// The lowest `count` channel numbers, from 1, that `taken` does not claim
/// (numbers past `MAX_CHANNELS_SKIPPED` taken ones are given whatever claims them).
pub fn free_channel_numbers(count: usize, taken: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut numbers = Vec::with_capacity(count);
    let mut skipped = 0;
    let mut n = 1;
    while numbers.len() < count {
        if skipped < MAX_CHANNELS_SKIPPED && taken(n) {
            skipped += 1;
        } else {
            numbers.push(n);
        }
        n += 1;
    }
    numbers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_numbers_no_one_uses_and_a_flood_only_pushes_them_up() {
        assert_eq!(free_channel_numbers(3, |_| false), vec![1, 2, 3]);
        assert_eq!(free_channel_numbers(3, |n| n == 1 || n == 3), vec![2, 4, 5]);
        assert!(free_channel_numbers(0, |_| true).is_empty());
        // Everything claimed: past the bound the numbers are taken anyway.
        let n = free_channel_numbers(2, |_| true);
        assert_eq!(n, vec![MAX_CHANNELS_SKIPPED + 1, MAX_CHANNELS_SKIPPED + 2]);
    }
}
