"""POM 3: updates encrypted with CKKS, decrypted only as a sum the decryptors verify."""
