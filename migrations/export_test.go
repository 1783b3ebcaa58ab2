package migrations

// LockKey is the advisory lock key a run holds, for tests that play a
// run in progress.
const LockKey = lockKey
