"""Where studies are stored: storage URLs and how they are opened (`urls`), the port through
which a search writes its trials (`port`), and the write-behind buffer that keeps a process's
running trials in memory and writes them in batches (`write_behind`)."""
