"""Services the click path asks about its visitor: where an address is, what a User-Agent
says, and whether the click is a bot. Their data is loaded once per process, at startup."""
