-- Retention deletes the agents' stored events by their time in small batches; without this
-- index each batch would scan the whole table.
CREATE INDEX run_events_by_at ON run_events (at);
