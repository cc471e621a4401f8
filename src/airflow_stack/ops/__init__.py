"""Operations on a stack: backups, carrying objects over from SQLite, retention, upgrades, doctor, and the
browser that takes the README's screenshots."""
