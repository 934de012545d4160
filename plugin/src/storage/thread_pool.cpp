// thread_pool.cpp: see thread_pool.hpp.
#include "thread_pool.hpp"

#include <algorithm>

namespace hps::storage {

ThreadPool::ThreadPool(size_t threads) {
    for (size_t i = 1; i < std::max<size_t>(threads, 1); ++i) workers_.emplace_back([this] { loop(); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::shared() {
    // Leaked on purpose: backends may still be used from static destructors of other libraries.
    static ThreadPool* pool = new ThreadPool(std::max(4u, std::min(32u, std::thread::hardware_concurrency())));
    return *pool;
}

void ThreadPool::work(Job& job, std::unique_lock<std::mutex>& lock) {
    while (job.next < job.n) {
        const size_t i = job.next++;
        lock.unlock();
        std::exception_ptr error;
        try {
            (*job.fn)(i);
        } catch (...) {
            error = std::current_exception();
        }
        lock.lock();
        if (error && !job.error) job.error = error;
        if (++job.done == job.n) finished_.notify_all();
    }
}

void ThreadPool::loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
        wake_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (stop_) return;
        Job* job = jobs_.front();
        work(*job, lock);
        // Finished handing out this job's indices: let the next job through.
        const auto it = std::find(jobs_.begin(), jobs_.end(), job);
        if (it != jobs_.end()) jobs_.erase(it);
    }
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t)>& fn) {
    if (n == 0) return;
    if (n == 1 || workers_.empty()) {
        for (size_t i = 0; i < n; ++i) fn(i);
        return;
    }
    Job job;
    job.fn = &fn;
    job.n = n;
    std::unique_lock<std::mutex> lock(mutex_);
    jobs_.push_back(&job);
    wake_.notify_all();
    work(job, lock);
    const auto it = std::find(jobs_.begin(), jobs_.end(), &job);
    if (it != jobs_.end()) jobs_.erase(it);
    finished_.wait(lock, [&] { return job.done == job.n; });
    if (job.error) std::rethrow_exception(job.error);
}

}  // namespace hps::storage
