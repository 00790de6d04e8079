"""Small shared helpers: atomic writes, seeding, run information, progress bars, configs."""
