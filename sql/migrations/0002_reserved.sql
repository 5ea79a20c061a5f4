-- 0002 is taken by the audit chain, written on main at the same time as 0003: this placeholder
-- only keeps the versions gap-free on the archive branch. The merge keeps main's 0002 and
-- deletes this file.
SELECT 1;
