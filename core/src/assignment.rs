//! Static partition assignment: partition `p` of a topic belongs to the
//! processor with StatefulSet ordinal `p mod N`. One function, used by the
//! processors (what to claim) and by the operator (what to report and
//! check), so both always agree.

/// Partitions of a `partitions`-partition topic owned by processor
/// `ordinal` of `replicas`: every `p` with `p mod replicas == ordinal`.
/// Empty when `replicas` is 0 or `ordinal` is not below `replicas` (a pod
/// left over from a larger scale owns nothing rather than another
/// ordinal's partitions).
pub fn partitions_of(ordinal: u32, replicas: u32, partitions: i32) -> Vec<i32> {
    if replicas == 0 || ordinal >= replicas {
        return Vec::new();
    }
    let (n, o) = (i64::from(replicas), i64::from(ordinal));
    (0..partitions.max(0))
        .filter(|p| i64::from(*p) % n == o)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(partitions_of(0, 3, 6), [0, 3]);
        assert_eq!(partitions_of(2, 3, 8), [2, 5]);
        assert_eq!(partitions_of(0, 1, 3), [0, 1, 2]);
        assert_eq!(partitions_of(3, 3, 6), Vec::<i32>::new());
        assert_eq!(partitions_of(0, 0, 6), Vec::<i32>::new());
        assert_eq!(partitions_of(0, 2, -1), Vec::<i32>::new());
    }

    proptest! {
        #[test]
        fn every_partition_has_exactly_one_owner(replicas in 1u32..20, partitions in 0i32..200) {
            let mut owners = vec![0u32; partitions as usize];
            for o in 0..replicas + 2 {
                for p in partitions_of(o, replicas, partitions) {
                    prop_assert!(o < replicas);
                    owners[p as usize] += 1;
                }
            }
            prop_assert!(owners.iter().all(|n| *n == 1));
        }
    }
}
