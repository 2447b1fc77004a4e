pub struct MemoryRegistry;
pub struct MemoryRegistryOptions;
