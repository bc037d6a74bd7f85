"""voiceclf: batch classification of adult male vs female voices."""
