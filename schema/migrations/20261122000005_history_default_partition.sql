-- Rows of a month that has no partition yet (a straggler dated long ago, or a
-- replay of old events) land here instead of failing the projector's batch.
-- Partition maintenance moves them into their month's partition when it
-- creates it, and deletes those older than the retention window.
CREATE TABLE customer_order_history_default PARTITION OF customer_order_history DEFAULT;
