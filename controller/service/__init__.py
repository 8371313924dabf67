"""The clinic service behind `modctl serve`: its HTTP app, the devices it holds, accounts and
logins."""
