// thread_pool.hpp: a fixed pool of host threads for per-partition / per-node database work.
// A lookup fans out into a handful of tasks (one per partition); creating threads per lookup
// would cost more than a loopback round trip, so the threads live as long as the pool.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hps::storage {

class ThreadPool {
public:
    explicit ThreadPool(size_t threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    // Runs fn(0..n) on the pool (the caller's thread takes part) and returns when all are done;
    // the first exception thrown by a task is rethrown here after every task has finished.
    void parallel_for(size_t n, const std::function<void(size_t)>& fn);

    size_t size() const { return workers_.size() + 1; }

    // One pool per process, sized to the machine; shared by all backends.
    static ThreadPool& shared();

private:
    struct Job {
        const std::function<void(size_t)>* fn = nullptr;
        size_t n = 0, next = 0, done = 0;
        std::exception_ptr error;
    };
    void work(Job& job, std::unique_lock<std::mutex>& lock);
    void loop();

    std::mutex mutex_;
    std::condition_variable wake_, finished_;
    std::vector<Job*> jobs_;
    bool stop_ = false;
    std::vector<std::thread> workers_;
};

}  // namespace hps::storage
