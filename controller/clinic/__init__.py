"""The clinic: bookings, roles, the clinic clock, patient rules, reminders."""
