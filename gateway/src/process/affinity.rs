//! Binding workers to cores: uWSGI's `--cpu-affinity N`, and a default for the case
//! where it pays on its own.
//!
//! A worker that runs Python keeps two threads busy under load: its event loop and the
//! Python thread holding the GIL, which hand every request to each other. With fewer
//! than two cores per worker, the kernel moves those threads between cores at every
//! hand-over, and a worker's requests wait whenever both of its threads queue behind other
//! workers' on a busy core. Bound to one core each (round robin), a worker's two threads
//! hand over on one core, and every core serves its own workers' requests in turn. On
//! this project's 2-core benchmark box (alternating runs, wrk -t1 -c32 on the same box):
//! hello world at 2 workers 86–94k → 104–113k requests/s, at 4 workers 74–79k → 89–95k;
//! the Django page at 4 workers the same requests/s with p99 11.2–12.1 → 6.0–8.0 ms.
//!
//! So the default binds exactly when each worker cannot have two cores
//! (`server::two_cores_each`, the rule that also turns off spinning), and only when the
//! process may use every core it is allowed on: under a cgroup CPU quota smaller than its
//! CPU set the cores are shared with others, and binding would crowd every such process
//! onto the first ones.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The cores worker `id` (1-based) is to be bound to; `None` leaves it to the scheduler.
///
/// - `per_worker`: `--cpu-affinity N`, N cores per worker taken in turn from `allowed`
///   (worker 1 the first N, worker 2 the next N, wrapping round) as uWSGI does; `Some(0)`
///   never binds; `None` binds one core per worker by the default rule (module docs).
/// - `python`: whether the worker runs Python (the default binds only those).
/// - `allowed`: the cores the process may run on, in order; `usable`: how many cores'
///   worth of time it may use (`available_parallelism`, which counts a cgroup quota).
pub(crate) fn plan(
    id: usize,
    processes: usize,
    per_worker: Option<usize>,
    python: bool,
    allowed: &[usize],
    usable: usize,
) -> Option<Vec<usize>> {
    if allowed.is_empty() || id == 0 {
        return None;
    }
    let n = match per_worker {
        Some(0) => return None,
        Some(n) => n.min(allowed.len()),
        None => {
            let two_each = crate::server::two_cores_each(processes, allowed.len());
            if !python || processes < 2 || two_each || usable < allowed.len() {
                return None;
            }
            1
        }
    };
    let first = ((id - 1) * n) % allowed.len();
    Some(
        (0..n)
            .map(|k| allowed[(first + k) % allowed.len()])
            .collect(),
    )
}

/// The cores this process may run on, in order.
pub(crate) fn allowed() -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Binds the calling thread, and so every thread it starts afterwards, to `cores`.
pub(crate) fn bind(cores: &[usize]) -> nix::Result<()> {
    let mut set = CpuSet::new();
    for &c in cores {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn cpu_affinity_takes_cores_in_turn_as_uwsgi_does() {
        let cores = [0, 1, 2, 3];
        let got: Vec<_> = (1..=5)
            .map(|id| plan(id, 5, Some(1), true, &cores, 4).unwrap())
            .collect();
        assert_eq!(got, [vec![0], vec![1], vec![2], vec![3], vec![0]]);
        let got: Vec<_> = (1..=3)
            .map(|id| plan(id, 3, Some(3), false, &cores, 4).unwrap())
            .collect();
        assert_eq!(got, [vec![0, 1, 2], vec![3, 0, 1], vec![2, 3, 0]]);
        // More cores than there are: all of them.
        assert_eq!(plan(2, 2, Some(9), true, &[0, 1], 2), Some(vec![0, 1]));
        // The allowed cores, not the machine's numbering.
        assert_eq!(plan(2, 2, Some(1), true, &[4, 6], 2), Some(vec![6]));
        assert_eq!(plan(1, 4, Some(0), true, &cores, 4), None);
    }

    #[test]
    fn by_default_only_python_workers_short_of_two_cores_each_are_bound() {
        // 2 cores: 2 or 4 workers are bound, one core each, in turn.
        assert_eq!(plan(1, 2, None, true, &[0, 1], 2), Some(vec![0]));
        assert_eq!(plan(2, 2, None, true, &[0, 1], 2), Some(vec![1]));
        assert_eq!(plan(3, 4, None, true, &[0, 1], 2), Some(vec![0]));
        // Two cores each: left to the scheduler.
        assert_eq!(plan(1, 2, None, true, &[0, 1, 2, 3], 4), None);
        // One process, a front without Python, a quota below the CPU set.
        assert_eq!(plan(1, 1, None, true, &[0], 1), None);
        assert_eq!(plan(1, 4, None, false, &[0, 1], 2), None);
        assert_eq!(plan(1, 4, None, true, &[0, 1, 2, 3], 2), None);
    }
}
