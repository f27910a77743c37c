"""Where studies are stored: storage URLs and how they are opened (`urls`), the port through
which the search driver reaches a storage (`port`), the write-behind buffer that keeps a
process's running trials in memory and writes them in batches (`write_behind`), the SQL
statements it writes with (`bulk_sql`) and its trial loader (`loader`). Nothing outside this
package tests storage classes or uses Optuna's private storage names."""
